import * as ops from "../engine/ops/mod.ts";
import { softmaxReference } from "../engine/ops/softmax.ts";
import { keep, noGrad, tidy } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { AdamW, clipGradNorm } from "../engine/optim.ts";
import { chooseBackend } from "../engine/backend_deno.ts";
import { sizeClass } from "../engine/buffer_pool.ts";
import { tensorFromRaw } from "../engine/tensor_io.ts";
import { assert, assertEquals, assertThrows } from "@std/assert";
import { assertClose, dev, gpuTest, randArray, toTensor } from "./_helpers.ts";
import { logSumExp } from "../engine/ops/_reference.ts";

Deno.test({
  name: "entropy() over a 151936-wide row matches the reference, and its backward -p(log p + H)",
  ...gpuTest,
  fn: async () => {
    const V = 151936;
    const x = randArray([2, V], 5);
    x.data.forEach((v, i) => x.data[i] = Math.fround(4 * v)); // peaked rows
    x.data[17] = 30; // one dominant logit in row 0
    const z = toTensor(x, true);
    const h = ops.entropy(z);
    const expected = softmaxReference.entropy(x);
    assertClose(await h.toArray(), expected.data, { atol: 2e-4, rtol: 1e-4 }, "H");
    h.backward(Tensor.from([1, -0.5], [2]));
    const dz = await z.grad!.toArray();
    // analytic gradient in float64 at every position
    const want = new Float64Array(2 * V);
    [1, -0.5].forEach((g, r) => {
      const row = x.data.subarray(r * V, (r + 1) * V);
      const lse = logSumExp(row);
      row.forEach((zj, j) => {
        const lp = zj - lse;
        want[r * V + j] = -g * Math.exp(lp) * (lp + expected.data[r]);
      });
    });
    assertClose(dz, want, { atol: 1e-6, rtol: 1e-3 }, "dH/dz");
    [z, h].forEach((t) => {
      t.grad?.dispose();
      t.dispose();
    });
  },
});

Deno.test({
  name: "entropy() is finite for -inf and huge logits",
  ...gpuTest,
  fn: async () => {
    const z = Tensor.from([-Infinity, 0, 0, -Infinity, 1e30, 1e30, 0, -1e30], [2, 4]);
    const h = await ops.entropy(z).toArray();
    assertClose(h, [Math.log(2), Math.log(2)], { atol: 1e-6 });
  },
});

Deno.test({
  name: "gradients accumulate across backward() calls and noGrad() records nothing",
  ...gpuTest,
  fn: async () => {
    const w = Tensor.from([1, 2, 3], [3], { requiresGrad: true });
    for (let i = 0; i < 2; i++) tidy(() => ops.sum(ops.square(w)).backward());
    assertClose(await w.grad!.toArray(), [4, 8, 12], { atol: 0 });
    const y = noGrad(() => ops.mul(w, w));
    assert(!y.requiresGrad && y.node === null);
    assertThrows(() => y.backward(), Error, "does not require grad");
  },
});

Deno.test({
  name: "tidy() disposes what it does not return; keep() survives",
  ...gpuTest,
  fn: () => {
    let inner: Tensor | null = null;
    let kept: Tensor | null = null;
    const out = tidy(() => {
      inner = Tensor.ones([4]);
      kept = keep(Tensor.ones([4]));
      return ops.addScalar(inner, 1);
    });
    assert(inner!.disposed, "temporary disposed");
    assert(!kept!.disposed, "kept survives");
    assert(!out.disposed, "returned survives");
    assertThrows(() => inner!.buffer, Error, "after dispose");
    out.dispose();
    kept!.dispose();
  },
});

Deno.test({
  name: "100 forward+backward+AdamW steps leave the pool's live bytes unchanged",
  ...gpuTest,
  fn: async () => {
    const w1 = Tensor.randn([8, 16], { seed: 1, std: 0.3, requiresGrad: true });
    const w2 = Tensor.randn([16, 5], { seed: 2, std: 0.3, requiresGrad: true });
    const x = Tensor.randn([6, 8], { seed: 3 });
    const ids = Tensor.from([0, 1, 2, 3, 4, 0], [6], { dtype: "i32" });
    const opt = new AdamW([w1, w2], { lr: 1e-2 });
    const step = () =>
      tidy(() => {
        opt.zeroGrad();
        const h = ops.silu(ops.matmul(x, w1));
        const logits = ops.matmul(h, w2);
        const loss = ops.add(
          ops.mean(ops.neg(ops.tokenLogProb(logits, ids))),
          ops.mean(ops.entropy(logits)),
        );
        loss.backward();
        clipGradNorm([w1, w2], 1.0);
        opt.update();
        return loss;
      });
    const first = step();
    const firstLoss = await first.item();
    first.dispose();
    const live = dev.liveBytes;
    let last = 0;
    let pooledMid = 0;
    for (let i = 0; i < 100; i++) {
      const l = step();
      if (i === 49) pooledMid = dev.pooledBytes;
      if (i === 99) last = await l.item();
      l.dispose();
    }
    await dev.sync();
    assertEquals(dev.liveBytes, live, "live bytes after 100 steps");
    assertEquals(dev.pooledBytes, pooledMid, "the pool stopped growing: buffers are reused");
    assert(last < firstLoss, `loss fell: ${firstLoss} -> ${last}`);
    opt.zeroGrad();
    opt.dispose();
    [w1, w2, x, ids].forEach((t) => t.dispose());
  },
});

Deno.test({
  name: "bf16 and f16 tensors round to nearest even and cast to f32 on the GPU",
  ...gpuTest,
  fn: async () => {
    const vals = [1, -2.5, 0.1, 3.14159, 65504, 1e-3];
    for (const dtype of ["bf16", "f16"] as const) {
      const t = Tensor.from(vals, [6], { dtype });
      const c = ops.cast(t, "f32");
      const cpu = await t.toArray();
      assertEquals([...(await c.toArray())], [...cpu], `${dtype} cast matches CPU decoding`);
      assertClose(cpu, vals, { atol: 0, rtol: dtype === "bf16" ? 4e-3 : 5e-4 }, dtype);
      t.dispose();
      c.dispose();
    }
    const e = ops.embedding(
      Tensor.from([1, 2, 3, 4, 5, 6], [3, 2], { dtype: "bf16" }),
      Tensor.from([2, 0], [2], { dtype: "i32" }),
    );
    assertEquals([...(await e.toArray())], [5, 6, 1, 2]);
  },
});

Deno.test({
  name: "ops reject bad shapes and dtypes with messages naming the op",
  ...gpuTest,
  fn: () => {
    const a = Tensor.zeros([2, 3]);
    const b = Tensor.zeros([4, 5]);
    assertThrows(() => ops.add(a, b), Error, "add: shapes [2,3] and [4,5]");
    assertThrows(() => ops.matmul(a, b), Error, "matmul: inner sizes");
    assertThrows(() => ops.slice(a, 1, 2, 9), Error, "slice");
    assertThrows(() => ops.reshape(a, [4, 2]), Error, "reshape");
    assertThrows(() => Tensor.from([1, 2], [3]), Error, "Tensor.from");
    assertThrows(
      () => ops.tokenLogProb(a, Tensor.from([0], [1], { dtype: "i32" })),
      Error,
      "tokenLogProb",
    );
  },
});

Deno.test("chooseBackend() keeps the user's choice, else takes Vulkan on Linux when a driver is installed", () => {
  assertEquals(chooseBackend("linux", "gl", ["lvp_icd.x86_64.json"]), "gl");
  assertEquals(chooseBackend("linux", undefined, ["lvp_icd.x86_64.json"]), "vulkan");
  assertEquals(chooseBackend("linux", undefined, []), undefined); // fresh machine: GL
  assertEquals(chooseBackend("linux", undefined, ["README"]), undefined);
  assertEquals(chooseBackend("darwin", undefined, ["MoltenVK_icd.json"]), undefined); // Metal
  assertEquals(chooseBackend("linux", "", ["lvp_icd.x86_64.json"]), "vulkan");
});

Deno.test({
  name: "loaded tensors and KV caches are sized exactly, and given back to the GPU when released",
  ...gpuTest,
  fn: async () => {
    await dev.sync();
    const [pooled, live] = [dev.pooledBytes, dev.liveBytes];
    // 1088 floats = 4352 bytes: its class would be 5120 (a 70.8 MB int4 matrix: an 83.9 MB class)
    const values = Float32Array.from({ length: 1088 }, (_, i) => i / 7);
    const t = tensorFromRaw({ dtype: "F32", shape: [1088], data: new Uint8Array(values.buffer) });
    assertEquals(t.buffer.size, 4352);
    assertEquals(sizeClass(4352), 5120);
    assertEquals(dev.liveBytes - live, t.buffer.size);
    assertEquals(Array.from(await t.toArray()), Array.from(values));
    t.dispose();
    await dev.sync();
    assertEquals(dev.liveBytes, live);
    assertEquals(dev.pooledBytes, pooled, "an exact-size buffer is not kept for reuse");
  },
});

Deno.test("sizeClass() rounds to 256 B, then quarter steps of a power of two", () => {
  assertEquals([1, 256, 257, 1024, 1025, 1300, 1600, 1800, 2000].map(sizeClass), [
    256,
    256,
    512,
    1024,
    1280,
    1536,
    1792,
    2048,
    2048,
  ]);
});

Deno.test({
  name: "ops across many dispatches and a readback agree with one another (batched submits)",
  ...gpuTest,
  fn: async () => {
    let x = Tensor.from([1], [1]);
    for (let i = 0; i < 200; i++) {
      const y = ops.addScalar(x, 1);
      x.dispose();
      x = y;
    }
    assertEquals(await x.item(), 201);
  },
});

Deno.test({
  name:
    "readbacks hand out their own buffers: values survive later readbacks through the same staging buffer, odd byte counts included",
  ...gpuTest,
  fn: async () => {
    // readMany transfers Deno's mapped-range copy instead of copying it again; were a mapped
    // range ever an alias of the staging memory, reusing the staging buffer would change these
    const first = await Tensor.from([1, 2, 3, 4], [4]).toArray();
    const bf16 = await Tensor.from([1, 2, 3], [3], { dtype: "bf16" }).toArray(); // 6 bytes
    for (let i = 0; i < 3; i++) await Tensor.from([9, 9, 9, 9], [4]).toArray();
    const [a, b] = await dev.readMany([
      { buffer: Tensor.from([5, 6], [2]).buffer, bytes: 8 },
      { buffer: Tensor.from([7, 8, 9], [3]).buffer, bytes: 10 },
    ]);
    for (let i = 0; i < 3; i++) await Tensor.from([0, 0, 0, 0], [4]).toArray();
    assertEquals([...first], [1, 2, 3, 4]);
    assertEquals([...bf16], [1, 2, 3]);
    assertEquals([a.byteLength, b.byteLength], [8, 10]);
    assertEquals([...new Float32Array(a)], [5, 6]);
    assertEquals([...new Float32Array(b.slice(0, 8))], [7, 8]);
  },
});

Deno.test({
  name:
    "a tensor past maxStorageBufferBindingSize is a clear error, and pool rounding never causes one",
  ...gpuTest,
  fn: async () => {
    const limit = dev.info.maxStorageBufferBindingSize;
    // just under the limit: the size class must not round it past the limit
    const ok = Tensor.empty([Math.floor((limit - 4096) / 4)]);
    ops.fill([1], 0).dispose();
    const filled = ops.addScalar(ops.fill([8], 1), 1);
    assertEquals([...(await filled.toArray())], [2, 2, 2, 2, 2, 2, 2, 2]);
    const big = Tensor.empty([limit / 4 + 64]);
    assertThrows(() => ops.addScalar(big, 1), Error, "maxStorageBufferBindingSize");
    const r = ops.addScalar(ok.view([ok.size]), 0);
    r.dispose();
    [ok, big, filled].forEach((t) => t.dispose());
    await dev.sync();
  },
});

Deno.test({
  name: "tidy() keeps what a returned tensor's tape needs, so backward works after the scope",
  ...gpuTest,
  fn: async () => {
    const w = Tensor.from([0.5, -1, 2], [1, 3], { requiresGrad: true });
    const ids = [2, 0];
    const outer = tidy(() => {
      // the inner scope returns only the loss; its activations and ids must survive
      const loss = tidy(() => {
        const e = ops.embedding(ops.reshape(w, [3, 1]), Tensor.from(ids, [2], { dtype: "i32" }));
        return ops.sum(ops.exp(e));
      });
      loss.backward();
      return loss;
    });
    assertClose(await outer.toArray(), [Math.exp(2) + Math.exp(0.5)], { atol: 1e-5 });
    assertClose(await w.grad!.toArray(), [Math.exp(0.5), 0, Math.exp(2)], { atol: 1e-5 });
  },
});

Deno.test({
  name:
    "matmul() with bf16 and f16 weights equals the f32 product of the rounded weights (vec4 and scalar paths)",
  ...gpuTest,
  fn: async () => {
    const cases: [number[], number[], boolean][] = [
      [[5, 12], [20, 12], true], // x·Wᵀ, vec4 path
      [[3, 8], [8, 12], false], // x·W, vec4 path
      [[5, 7], [9, 7], true], // K % 4 != 0: scalar path
      [[2, 3, 16], [13, 16], true], // batched activations, shared weight
    ];
    for (const dtype of ["bf16", "f16"] as const) {
      for (const [as, bs, transB] of cases) {
        const a = ops.randomNormal(as, { seed: 1 });
        const bf = ops.randomNormal(bs, { seed: 2 });
        const bh = Tensor.from(await bf.toArray(), bs, { dtype });
        const rounded = Tensor.from(await bh.toArray(), bs);
        const got = await ops.matmul(a, bh, { transB }).toArray();
        const want = await ops.matmul(a, rounded, { transB }).toArray();
        assertClose(
          got,
          want,
          { atol: 1e-5, rtol: 1e-5 },
          `${dtype} [${as}]·[${bs}]${transB ? "ᵀ" : ""}`,
        );
      }
    }
  },
});

Deno.test({
  name:
    "matmul() decode shapes (GEMV: M 1, 3, 16, N not a tile multiple, f32/bf16/f16) match the CPU reference and the 8x8 kernel bit for bit, with the bias and silu·mul epilogues and q/k/v in one dispatch (GEMV or tile)",
  ...gpuTest,
  fn: async () => {
    const {
      GEMV_MAX_ROWS,
      gemvBias,
      gemvQkv,
      gemvSiluMul,
      linearQkv,
      linearSiluMul,
      matmulBias,
      matmulReference,
    } = await import("../engine/ops/matmul.ts");
    for (const dtype of ["f32", "bf16", "f16"] as const) {
      for (
        const [M, K, N] of [
          [1, 8, 13],
          [2, 12, 9],
          [3, 20, 130],
          [4, 64, 517],
          [16, 64, 517],
          [1, 896, 37],
          [9, 12, 70],
          [70, 16, 21],
        ]
      ) {
        const rows = randArray([Math.max(17, M), K], 3);
        const w = randArray([N, K], 4);
        // weights as stored (rounded to the dtype), and the f64 reference on those values
        const wt = Tensor.from(w.data, [N, K], { dtype });
        const wv = Float64Array.from(await wt.toArray());
        const x17 = toTensor(rows); // 17 rows: the 8x8 kernel
        const xM = Tensor.from(rows.data.slice(0, M * K), [M, K]); // M rows: GEMV
        dev.dispatchCounts.clear();
        const got = await ops.matmul(xM, wt, { transB: true }).toArray();
        assertEquals(
          dev.dispatchCounts.get("gemv") ?? 0,
          M <= GEMV_MAX_ROWS ? 1 : 0,
          `[${M},${K}]·[${N},${K}]ᵀ ${dtype}: GEMV up to ${GEMV_MAX_ROWS} rows, the tile beyond`,
        );
        const tiled = (await ops.matmul(x17, wt, { transB: true }).toArray()).slice(0, M * N);
        assertEquals(
          Array.from(got),
          Array.from(tiled),
          `GEMV = 8x8 kernel, ${dtype} M=${M} N=${N}`,
        );
        const ref = matmulReference(
          { shape: [M, K], data: rows.data.slice(0, M * K) },
          {
            shape: [K, N],
            data: Float64Array.from(
              { length: K * N },
              (_, i) => wv[(i % N) * K + Math.floor(i / N)],
            ),
          },
        );
        assertClose(got, ref.data, { atol: 1e-4, rtol: 1e-4 }, `${dtype} M=${M} K=${K} N=${N}`);
        // a linear layer's bias in the GEMV's store: the same bits as matmul then add
        const bias = toTensor(randArray([N], 5));
        const fused = gemvBias(xM, wt, bias);
        assertEquals(fused === null, M > GEMV_MAX_ROWS, `gemvBias M=${M}`);
        if (fused) {
          const twoOps = await ops.add(ops.matmul(xM, wt, { transB: true }), bias).toArray();
          assertEquals(Array.from(await fused.toArray()), Array.from(twoOps), `gemvBias ${dtype}`);
        }
        // and beyond the GEMV's rows, in the 8x8 tile's store
        const biased = matmulBias(xM, wt, bias);
        assert(biased !== null, `matmulBias M=${M} K=${K}`);
        assertEquals(
          Array.from(await biased.toArray()),
          Array.from(await ops.add(ops.matmul(xM, wt, { transB: true }), bias).toArray()),
          `matmulBias ${dtype} M=${M} N=${N}`,
        );
        // the gated MLP's product in the GEMV's store (or the tile's beyond its rows): the same
        // bits as two matmuls then siluMul
        const up = Tensor.from(randArray([N, K], 6).data, [N, K], { dtype });
        assertEquals(gemvSiluMul(xM, wt, up) === null, M > GEMV_MAX_ROWS, `gemvSiluMul M=${M}`);
        const gated = linearSiluMul(xM, wt, up);
        assert(gated !== null, `linearSiluMul M=${M}`);
        {
          const threeOps = await ops.siluMul(
            ops.matmul(xM, wt, { transB: true }),
            ops.matmul(xM, up, { transB: true }),
          ).toArray();
          assertEquals(
            Array.from(await gated.toArray()),
            Array.from(threeOps),
            `linearSiluMul ${dtype} M=${M} N=${N}`,
          );
        }
        // q, k and v in one dispatch, with and without biases: the same bits as three linears
        const Nkv = 4 + (N % 5);
        const wKey = Tensor.from(randArray([Nkv, K], 7).data, [Nkv, K], { dtype });
        const wValue = Tensor.from(randArray([Nkv, K], 8).data, [Nkv, K], { dtype });
        const biases = [bias, toTensor(randArray([Nkv], 9)), toTensor(randArray([Nkv], 10))];
        for (const withBias of [true, false]) {
          const qkvBiases = withBias ? biases as [Tensor, Tensor, Tensor] : null;
          const viaGemv = gemvQkv(xM, [wt, wKey, wValue], qkvBiases);
          assertEquals(viaGemv === null, M > GEMV_MAX_ROWS, `gemvQkv M=${M}`);
          const qkv = linearQkv(xM, [wt, wKey, wValue], qkvBiases);
          assert(qkv !== null, `linearQkv M=${M}`);
          for (const [p, w] of [wt, wKey, wValue].entries()) {
            const one = ops.matmul(xM, w, { transB: true });
            const want = await (withBias ? ops.add(one, biases[p]) : one).toArray();
            assertEquals(
              Array.from(await qkv[p].toArray()),
              Array.from(want),
              `linearQkv part ${p} ${dtype} M=${M} N=${N} bias=${withBias}`,
            );
          }
        }
      }
    }
  },
});

Deno.test({
  name:
    "elementwise ops take the vec4 streaming kernel on sizes that are multiples of 4 and match the CPU reference",
  ...gpuTest,
  fn: async () => {
    const { binaryOps, elementwiseReference, scalarOps, unaryOps } = await import(
      "../engine/ops/elementwise.ts"
    );
    for (const n of [4, 20, 64, 1000]) {
      const x = randArray([n], 1, "positive");
      const y = randArray([n], 2, "positive");
      const one = randArray([1], 3, "positive");
      dev.dispatchCounts.clear();
      for (const op of Object.keys(unaryOps) as (keyof typeof unaryOps)[]) {
        const got = await (ops as unknown as Record<string, (t: Tensor) => Tensor>)[op](toTensor(x))
          .toArray();
        assertClose(
          got,
          elementwiseReference.unary(op, x).data,
          { atol: 1e-5, rtol: 1e-4 },
          `${op} n=${n}`,
        );
      }
      for (const op of Object.keys(scalarOps) as (keyof typeof scalarOps)[]) {
        const got = await (ops as unknown as Record<string, (t: Tensor, s: number) => Tensor>)[op](
          toTensor(x),
          1.25,
        )
          .toArray();
        assertClose(
          got,
          elementwiseReference.scalar(op, x, 1.25).data,
          { atol: 1e-5, rtol: 1e-4 },
          `${op} n=${n}`,
        );
      }
      for (const op of Object.keys(binaryOps) as (keyof typeof binaryOps)[]) {
        for (const b of [y, one]) {
          const got = await (ops as unknown as Record<string, (a: Tensor, b: Tensor) => Tensor>)
            [op](
              toTensor(x),
              toTensor(b),
            ).toArray();
          assertClose(
            got,
            elementwiseReference.binary(op, x, b).data,
            { atol: 1e-5, rtol: 1e-4 },
            `${op} n=${n}`,
          );
        }
      }
    }
  },
});
