/**
 * Quantized weights: the packed layout and quantizer, GPTQ's and AWQ's
 * published packings against independent float64 dequantizations written
 * from their reference implementations, and the kernels (GEMV, tile,
 * backward) against dequantize-then-multiply, on odd shapes.
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import { Rng } from "../engine/random.ts";
import { Tensor } from "../engine/tensor.ts";
import { noGrad } from "../engine/scope.ts";
import { f16ToF32, f32ToF16 } from "../engine/half.ts";
import type { RawTensor } from "../engine/safetensors.ts";
import {
  codeAt,
  dequantizeMatrix,
  type PackedMatrix,
  quantizeMatrix,
  type QuantScheme,
} from "../engine/quant/format.ts";
import { parseQuantizationConfig, repackQuantized } from "../engine/quant/checkpoints.ts";
import { QuantizedWeight } from "../engine/quant/weight.ts";
import { quantLinear, quantLinearReference } from "../engine/ops/quant_matmul.ts";
import { mul, sum } from "../engine/ops/mod.ts";
import { initDevice } from "../engine/device.ts";

await initDevice();

function randn(rng: Rng, n: number, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => scale * rng.normal());
}

function i32Raw(values: Uint32Array, shape: number[]): RawTensor {
  return { dtype: "I32", shape, data: new Uint8Array(values.buffer) };
}

function f16Raw(values: number[], shape: number[]): RawTensor {
  const h = Uint16Array.from(values, f32ToF16);
  return { dtype: "F16", shape, data: new Uint8Array(h.buffer) };
}

const SCHEMES: QuantScheme[] = [
  { bits: 4, groupSize: 32, symmetric: false },
  { bits: 4, groupSize: 64, symmetric: true },
  { bits: 8, groupSize: 64, symmetric: false },
  { bits: 8, groupSize: 0, symmetric: true },
];

Deno.test("quantizeMatrix: codes in range, every value within a step of its group's grid", () => {
  const rng = new Rng(1);
  const [N, K] = [7, 96]; // K not a multiple of 64: a partial last group
  const w = randn(rng, N * K);
  w[5] = 0; // zeros, a constant group
  for (let k = 32; k < 64; k++) w[2 * K + k] = 0;
  for (const s of SCHEMES) {
    const p = quantizeMatrix(w, N, K, s);
    const d = dequantizeMatrix(p);
    const g = s.groupSize || K;
    for (let n = 0; n < N; n++) {
      for (let k = 0; k < K; k++) {
        assert(codeAt(p, n, k) < 2 ** s.bits);
        const gw = w.subarray(
          n * K + Math.floor(k / g) * g,
          n * K + Math.min(K, (Math.floor(k / g) + 1) * g),
        );
        const lo = Math.min(0, ...gw);
        const hi = Math.max(0, ...gw);
        const step = s.symmetric
          ? 2 * Math.max(-lo, hi) / (2 ** s.bits - 1)
          : (hi - lo) / (2 ** s.bits - 1);
        // half a step, and at a group's ends the rounded zero (asymmetric) or the grid's
        // clipped top (symmetric); the scale's f16 rounding
        const tol = (s.symmetric ? 1.5 : 1) * step * 1.001 + 1e-6;
        assert(Math.abs(d[n * K + k] - w[n * K + k]) <= tol, `${JSON.stringify(s)} (${n}, ${k})`);
      }
    }
    // an all-zero group stays exactly zero
    for (let k = 32; k < 64; k++) assertEquals(d[2 * K + k], 0);
  }
  assertThrows(
    () => quantizeMatrix(w.subarray(0, 7 * 90), 7, 90, SCHEMES[0]),
    Error,
    "multiple of 32",
  );
});

/** GPTQ's pack (AutoGPTQ qlinear_cuda_old.pack): codes (K, N) along K, zeros along N, stored zero - 1. */
function gptqPack(codes: number[][], zeros: number[][], bits: number, v1: boolean) {
  const [K, N] = [codes.length, codes[0].length];
  const per = 32 / bits;
  const qweight = new Uint32Array((K / per) * N);
  for (let k = 0; k < K; k++) {
    for (let n = 0; n < N; n++) {
      qweight[Math.floor(k / per) * N + n] |= codes[k][n] << (bits * (k % per));
    }
  }
  const G = zeros.length;
  const qzeros = new Uint32Array(G * (N / per));
  for (let g = 0; g < G; g++) {
    for (let n = 0; n < N; n++) {
      const z = (zeros[g][n] - (v1 ? 1 : 0)) & ((1 << bits) - 1);
      qzeros[g * (N / per) + Math.floor(n / per)] |= z << (bits * (n % per));
    }
  }
  return { qweight, qzeros };
}

/** AWQ's pack (AutoAWQ gemm.py): codes (K, N) along N, nibble j of word w holds column 8w + ORDER[j]. */
function awqPack(codes: number[][]): Uint32Array {
  const ORDER = [0, 2, 4, 6, 1, 3, 5, 7];
  const [K, N] = [codes.length, codes[0].length];
  const out = new Uint32Array(K * (N / 8));
  for (let k = 0; k < K; k++) {
    for (let w = 0; w < N / 8; w++) {
      for (let j = 0; j < 8; j++) out[k * (N / 8) + w] |= codes[k][8 * w + ORDER[j]] << (4 * j);
    }
  }
  return out;
}

Deno.test("GPTQ (4 and 8 bits, v1 and v2 zeros, with and without act-order) and AWQ repack to the same weights as their own dequantization", () => {
  const rng = new Rng(2);
  const [K, N, g] = [96, 24, 32];
  const G = K / g;
  for (const bits of [4, 8] as const) {
    for (const v1 of [true, false]) {
      for (const actOrder of [false, true]) {
        const maxq = 2 ** bits - 1;
        const codes = Array.from(
          { length: K },
          () => Array.from({ length: N }, () => rng.int(maxq + 1)),
        );
        // every zero, 0 included (v1 stores it as -1 & maxq, which must wrap back)
        const zeros = Array.from(
          { length: G },
          () => Array.from({ length: N }, () => rng.int(maxq + 1)),
        );
        zeros[0][0] = 0;
        const scales = Array.from(
          { length: G * N },
          () => f16ToF32(f32ToF16(0.01 + rng.next() * 0.1)),
        );
        // act-order: each row's group is a shuffled assignment with g rows per group
        const gIdx = Int32Array.from({ length: K }, (_, k) => Math.floor(k / g));
        if (actOrder) {
          for (let k = K - 1; k > 0; k--) {
            const j = rng.int(k + 1);
            [gIdx[k], gIdx[j]] = [gIdx[j], gIdx[k]];
          }
        }
        const { qweight, qzeros } = gptqPack(codes, zeros, bits, v1);
        const packed = repackQuantized(
          "layer",
          {
            qweight: i32Raw(qweight, [K * bits / 32, N]),
            qzeros: i32Raw(qzeros, [G, N * bits / 32]),
            scales: f16Raw(scales, [G, N]),
            gIdx: { dtype: "I32", shape: [K], data: new Uint8Array(gIdx.buffer) },
          },
          N,
          K,
          { method: "gptq", bits, groupSize: g, zeroOffset: v1 ? 1 : 0 },
        );
        assertEquals(packed.perm !== null, actOrder);
        const d = dequantizeMatrix(packed);
        // the reference: W[n, k] = scales[g_idx[k], n] * (q[k, n] - zero[g_idx[k], n])
        for (let k = 0; k < K; k++) {
          for (let n = 0; n < N; n++) {
            const grp = gIdx[k];
            const want = scales[grp * N + n] * (codes[k][n] - zeros[grp][n]);
            assert(
              Math.abs(d[n * K + k] - want) < 1e-9,
              `bits ${bits} v1 ${v1} act ${actOrder} (${n}, ${k})`,
            );
          }
        }
      }
    }
  }
  // AWQ: 4 bits, zeros from 0
  const codes = Array.from({ length: K }, () => Array.from({ length: N }, () => rng.int(16)));
  const zeros = Array.from({ length: G }, () => Array.from({ length: N }, () => rng.int(16)));
  const scales = Array.from({ length: G * N }, () => f16ToF32(f32ToF16(0.01 + rng.next() * 0.1)));
  const zw = awqPack(zeros);
  const packed = repackQuantized(
    "layer",
    {
      qweight: i32Raw(awqPack(codes), [K, N / 8]),
      qzeros: i32Raw(zw, [G, N / 8]),
      scales: f16Raw(scales, [G, N]),
      gIdx: null,
    },
    N,
    K,
    { method: "awq", bits: 4, groupSize: g, zeroOffset: 0 },
  );
  const d = dequantizeMatrix(packed);
  for (let k = 0; k < K; k++) {
    for (let n = 0; n < N; n++) {
      const grp = Math.floor(k / g);
      const want = (codes[k][n] - zeros[grp][n]) * scales[grp * N + n];
      assert(Math.abs(d[n * K + k] - want) < 1e-9, `awq (${n}, ${k})`);
    }
  }
});

Deno.test("quantization_config: GPTQ and AWQ read; other methods and variants refused naming the field", () => {
  const at = (qc: Record<string, unknown>) =>
    parseQuantizationConfig({ quantization_config: qc }, "c.json");
  assertEquals(at({ quant_method: "gptq", bits: 4, group_size: 128, desc_act: false, sym: true }), {
    method: "gptq",
    bits: 4,
    groupSize: 128,
    zeroOffset: 1,
  });
  assertEquals(
    at({ quant_method: "gptq", bits: 8, group_size: -1, checkpoint_format: "gptq_v2" })?.zeroOffset,
    0,
  );
  assertEquals(
    at({ quant_method: "awq", bits: 4, group_size: 128, version: "gemm", zero_point: true })
      ?.method,
    "awq",
  );
  assertEquals(parseQuantizationConfig({}, "c.json"), null);
  for (
    const [qc, message] of [
      [{ quant_method: "bitsandbytes" }, "quant_method"],
      [{ quant_method: "gptq", bits: 3, group_size: 128 }, "quantization_config.bits is 3"],
      [
        { quant_method: "awq", bits: 4, group_size: 128, version: "gemv" },
        "quantization_config.version",
      ],
      [{ quant_method: "awq", bits: 8, group_size: 128 }, "quantization_config.bits is 8"],
      [
        { quant_method: "gptq", bits: 4, group_size: 128, checkpoint_format: "marlin" },
        "checkpoint_format",
      ],
    ] as [Record<string, unknown>, string][]
  ) {
    assertThrows(() => at(qc), Error, message);
  }
});

/** x (M, K) and a quantized W (N, K): GPU product and gradient against the float64 reference. */
async function checkProduct(M: number, N: number, K: number, s: QuantScheme, seed: number) {
  const rng = new Rng(seed);
  const packed: PackedMatrix = quantizeMatrix(randn(rng, N * K, 0.5), N, K, s);
  const x = randn(rng, M * K);
  const w = QuantizedWeight.upload(packed);
  // a small binding limit splits W by rows: the parts' products are concatenated
  const split = QuantizedWeight.upload(packed, 4 * (K * s.bits / 32) * 5);
  try {
    const want = quantLinearReference({ shape: [M, K], data: Float64Array.from(x) }, packed).data;
    for (const weight of [w, split]) {
      const xt = Tensor.from(Array.from(x), [M, K], { requiresGrad: true });
      const y = quantLinear(xt, weight);
      const got = await y.toArray();
      for (let i = 0; i < M * N; i++) {
        assert(
          Math.abs(got[i] - want[i]) <= 1e-4 * (1 + Math.abs(want[i])),
          `M ${M} N ${N} K ${K} ${JSON.stringify(s)}: [${i}] ${got[i]} vs ${want[i]}`,
        );
      }
      // backward: d(sum(y * r))/dx = r · W
      const r = randn(rng, M * N);
      sum(mul(y, Tensor.from(Array.from(r), [M, N]))).backward();
      const dx = await xt.grad!.toArray();
      const W = dequantizeMatrix(packed);
      for (let m = 0; m < M; m++) {
        for (let k = 0; k < K; k++) {
          let e = 0;
          for (let n = 0; n < N; n++) e += r[m * N + n] * W[n * K + k];
          assert(Math.abs(dx[m * K + k] - e) <= 1e-4 * (1 + Math.abs(e)), `dx (${m}, ${k})`);
        }
      }
    }
    assert(split.parts.length > 1);
  } finally {
    w.dispose();
    split.dispose();
  }
}

Deno.test("quantized products (GEMV at M 1 and 3, tile at 16 and 64) and their backward against dequantize-then-multiply, K and N not multiples of the group", async () => {
  let seed = 10;
  for (const s of SCHEMES) {
    for (const M of [1, 3, 16, 64]) await checkProduct(M, 37, 96, s, seed++);
  }
});

Deno.test("the quantized GEMV and tile kernels give the same bits; a finite-difference check of the backward", async () => {
  const rng = new Rng(3);
  const [N, K] = [45, 128];
  for (const s of SCHEMES.slice(0, 3)) {
    const w = QuantizedWeight.upload(quantizeMatrix(randn(rng, N * K), N, K, s));
    const x = randn(rng, 8 * K);
    const rows = (M: number) =>
      noGrad(() => quantLinear(Tensor.from(Array.from(x.subarray(0, M * K)), [M, K]), w)).toArray();
    const [gemv, tile] = [await rows(4), await rows(8)]; // 4 rows: GEMV; 8: the tile
    assertEquals(Array.from(gemv), Array.from(tile.slice(0, 4 * N)));
    // finite differences of sum(y^2)/2 along one input coordinate
    const loss = async (v: Float32Array) => {
      const y = await noGrad(() => quantLinear(Tensor.from(Array.from(v), [1, K]), w)).toArray();
      return Array.from(y as ArrayLike<number>).reduce((a, b) => a + b * b, 0) / 2;
    };
    const x1 = x.slice(0, K);
    const xt = Tensor.from(Array.from(x1), [1, K], { requiresGrad: true });
    const y = quantLinear(xt, w);
    sum(mul(y, y)).backward();
    const g = await xt.grad!.toArray(); // d(sum y^2) = 2 * d(loss)
    for (const k of [0, 33, 127]) {
      const h = 1e-2;
      const up = x1.slice();
      up[k] += h;
      const down = x1.slice();
      down[k] -= h;
      const fd = (await loss(up) - await loss(down)) / (2 * h);
      assert(Math.abs(g[k] / 2 - fd) <= 2e-2 * (1 + Math.abs(fd)), `k ${k}: ${g[k] / 2} vs ${fd}`);
    }
    w.dispose();
  }
});
