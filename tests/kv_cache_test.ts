/** The KV cache's write ops against their CPU references, and the fused rope-and-write against the ops it replaces. */
import { KVCache } from "../engine/model/kv_cache.ts";
import { ropeTables } from "../engine/nn.ts";
import {
  cacheWrite,
  kvCacheReference,
  rope,
  ropeCacheWrite,
  ropeCacheWriteRows,
} from "../engine/ops/mod.ts";
import { Tensor } from "../engine/tensor.ts";
import { noGrad } from "../engine/scope.ts";
import { assertEquals, assertThrows } from "@std/assert";
import { assertClose, gpuTest, randArray, toTensor } from "./_helpers.ts";

Deno.test({
  name: "cacheWrite() and ropeCacheWrite() match their CPU references at any slot",
  ...gpuTest,
  fn: async () => {
    const [B, H, Hkv, D, max] = [2, 4, 2, 8, 9];
    for (const [at, T] of [[0, 4], [4, 1], [8, 1], [3, 5]]) {
      const keys0 = randArray([B, Hkv, max, D], 1);
      const values0 = randArray([B, Hkv, max, D], 2);
      const q = randArray([B, H, T, D], 3);
      const k = randArray([B, Hkv, T, D], 4);
      const v = randArray([B, Hkv, T, D], 5);
      const positions = Array.from({ length: B * T }, (_, i) => at + (i % T));
      const tables = ropeTables(positions, B, T, D, 10000);
      const cosSin = await Promise.all([tables.cos.toArray(), tables.sin.toArray()]);
      const [cos, sin] = cosSin.map((x) => ({ shape: [B, 1, T, D], data: Float64Array.from(x) }));
      const want = kvCacheReference.ropeWrite(q, k, v, cos, sin, {
        keys: keys0,
        values: values0,
        at,
      });
      const keys = toTensor(keys0);
      const values = toTensor(values0);
      const qOut = ropeCacheWrite(toTensor(q), toTensor(k), toTensor(v), tables.cos, tables.sin, {
        keys,
        values,
        at,
      });
      const label = `at ${at} T ${T}`;
      assertClose(await qOut.toArray(), want.q.data, { atol: 1e-6, rtol: 1e-6 }, `q ${label}`);
      assertClose(
        await keys.toArray(),
        want.keys.data,
        { atol: 1e-6, rtol: 1e-6 },
        `keys ${label}`,
      );
      assertClose(
        await values.toArray(),
        want.values.data,
        { atol: 0, rtol: 0 },
        `values ${label}`,
      );
      const plain = toTensor(keys0);
      cacheWrite(toTensor(k), toTensor(v), plain, toTensor(values0), at);
      assertEquals(
        Array.from(await plain.toArray()),
        Array.from(kvCacheReference.write(keys0, k, at).data, Math.fround),
        `plain write ${label}`,
      );
    }
    const full = toTensor(randArray([1, 1, 4, 8], 6));
    const x = toTensor(randArray([1, 1, 2, 8], 7));
    assertThrows(() => cacheWrite(x, x, full, full, 3), Error, "5 tokens exceed the cache's 4");
  },
});

Deno.test({
  name:
    "KVCache.writeRotated (rope on q and k and the cache write in one dispatch) equals rope, rope, then write bit for bit",
  ...gpuTest,
  fn: async () => {
    const [B, H, Hkv, D, maxLength] = [2, 4, 2, 16, 12];
    const config = { numLayers: 1, numKvHeads: Hkv, headDim: D } as ConstructorParameters<
      typeof KVCache
    >[0];
    for (const [past, T] of [[0, 3], [5, 1], [11, 1]]) {
      const positions = Array.from({ length: B * T }, (_, i) => past + (i % T) + (i >= T ? 1 : 0));
      const { cos, sin } = ropeTables(positions, B, T, D, 10000);
      const q = toTensor(randArray([B, H, T, D], 11 + T));
      const k = toTensor(randArray([B, Hkv, T, D], 12 + T));
      const v = toTensor(randArray([B, Hkv, T, D], 13 + T));
      const [fused, apart] = [new KVCache(config, B, maxLength), new KVCache(config, B, maxLength)];
      for (const cache of [fused, apart]) {
        noGrad(() => { // the same earlier contents in both caches
          cache.write(
            0,
            toTensor(randArray([B, Hkv, maxLength, D], 14)),
            toTensor(randArray([B, Hkv, maxLength, D], 15)),
          );
        });
        cache.length = past;
      }
      const qFused = fused.writeRotated(0, q, k, v, cos, sin);
      const qApart = rope(q, cos, sin);
      apart.write(0, rope(k, cos, sin), v);
      const label = `past ${past} T ${T}`;
      assertEquals(
        Array.from(await qFused.toArray()),
        Array.from(await qApart.toArray()),
        `q ${label}`,
      );
      for (const part of ["keys", "values"] as const) {
        assertEquals(
          Array.from(await fused[part][0].toArray()),
          Array.from(await apart[part][0].toArray()),
          `${part} ${label}`,
        );
      }
      fused.dispose();
      apart.dispose();
    }
  },
});

Deno.test({
  name:
    "ropeCacheWriteRows() writes each row's token at its own position, and nothing for a negative one",
  ...gpuTest,
  fn: async () => {
    const [B, H, Hkv, D, max] = [3, 4, 2, 8, 9];
    const at = [2, -1, 7];
    const keys0 = randArray([B, Hkv, max, D], 21);
    const values0 = randArray([B, Hkv, max, D], 22);
    const q = randArray([B, H, 1, D], 23);
    const k = randArray([B, Hkv, 1, D], 24);
    const v = randArray([B, Hkv, 1, D], 25);
    const tables = ropeTables(at.map((p) => Math.max(p, 0)), B, 1, D, 10000);
    const [cosA, sinA] = await Promise.all([tables.cos.toArray(), tables.sin.toArray()]);
    const keys = toTensor(keys0);
    const values = toTensor(values0);
    const qOut = ropeCacheWriteRows(toTensor(q), toTensor(k), toTensor(v), tables.cos, tables.sin, {
      keys,
      values,
      positions: Tensor.from(at, [B], { dtype: "i32" }),
    });
    // the reference, one row at a time through the uniform write
    const wantK = Float64Array.from(keys0.data);
    const wantV = Float64Array.from(values0.data);
    const wantQ: number[] = [];
    for (let b = 0; b < B; b++) {
      const row = (x: { shape: number[]; data: Float64Array }, h: number) => ({
        shape: [1, h, 1, D],
        data: x.data.slice(b * h * D, (b + 1) * h * D),
      });
      const cs = (a: Float32Array | Int32Array) => ({
        shape: [1, 1, 1, D],
        data: Float64Array.from(a.slice(b * D, (b + 1) * D)),
      });
      const slot = (x: Float64Array) => ({
        shape: [1, Hkv, max, D],
        data: x.slice(b * Hkv * max * D, (b + 1) * Hkv * max * D),
      });
      const r = kvCacheReference.ropeWrite(
        row(q, H),
        row(k, Hkv),
        row(v, Hkv),
        cs(cosA),
        cs(sinA),
        {
          keys: slot(wantK),
          values: slot(wantV),
          at: Math.max(at[b], 0),
        },
      );
      wantQ.push(...r.q.data);
      if (at[b] >= 0) {
        wantK.set(r.keys.data, b * Hkv * max * D);
        wantV.set(r.values.data, b * Hkv * max * D);
      }
    }
    assertClose(await qOut.toArray(), wantQ, { atol: 1e-6, rtol: 1e-6 }, "q");
    assertClose(await keys.toArray(), wantK, { atol: 1e-6, rtol: 1e-6 }, "keys");
    assertClose(await values.toArray(), wantV, { atol: 0, rtol: 0 }, "values");
  },
});
