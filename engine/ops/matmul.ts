/**
 * Batched matmul with either operand transposed (by strides, no copies).
 * a: (..., M, K) or (..., K, M) if transA; b: (..., K, N) or (..., N, K) if transB,
 * or 2-D and shared by every batch. out: (..., M, N).
 * @module
 */
import { gemvColumns, gemvKernel, gemvQkvKernel, weightsPerLoad } from "../../kernels/gemv.ts";
import { linearTileKernel, matmulKernel, matmulVec4Kernel, MM } from "../../kernels/matmul.ts";
import { record } from "../autograd.ts";
import { launch } from "../launch.ts";
import { numel, Tensor } from "../tensor.ts";
import type { NDArray } from "./_reference.ts";
import { sum } from "./reduce.ts";

/**
 * Products with at most this many rows (decode steps) take the GEMV kernel: on
 * the CPU adapter (bf16 1x896x4864) it takes 2.8 ms at M = 1 against the tile's
 * 6.2, 4.3 against 4.9 at M = 2..4, and loses beyond (7.5 against 4.7 at M = 8).
 */
export const GEMV_MAX_ROWS = 4;

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
}

/** out = op(a) · op(b); no tape. */
function matmulRaw(a: Tensor, b: Tensor, transA: boolean, transB: boolean): Tensor {
  if (a.dtype !== "f32" || b.dtype === "i32") {
    throw new Error(`matmul: expects f32 a and float b, got ${a.dtype} and ${b.dtype}`);
  }
  if (a.shape.length < 2 || b.shape.length < 2) {
    throw new Error(`matmul: operands need rank >= 2, got [${a.shape}] and [${b.shape}]`);
  }
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const [M, K] = transA ? [ac, ar] : [ar, ac];
  const [Kb, N] = transB ? [bc, br] : [br, bc];
  if (K !== Kb) {
    throw new Error(
      `matmul: inner sizes differ: [${a.shape}]${transA ? "ᵀ" : ""} · [${b.shape}]${
        transB ? "ᵀ" : ""
      }`,
    );
  }
  // Either operand may be 2-D (shared by every batch); otherwise batches must agree.
  const aBatch = numel(a.shape.slice(0, -2));
  const bBatch = numel(b.shape.slice(0, -2));
  const batchShape = (a.shape.length >= b.shape.length ? a.shape : b.shape).slice(0, -2);
  const batch = numel(batchShape);
  if ((aBatch !== 1 && aBatch !== batch) || (bBatch !== 1 && bBatch !== batch)) {
    throw new Error(`matmul: batch of [${b.shape}] does not match [${a.shape}]`);
  }
  const out = Tensor.empty([...batchShape, M, N]);
  if (out.size === 0) return out;
  // b shared by every batch and a row-major: one (batch*M, K) product fills the grid better
  const fold = bBatch === 1 && aBatch > 1 && !transA;
  launchMatmul(
    a,
    b,
    out,
    fold ? M * aBatch : M,
    N,
    K,
    fold ? 1 : batch,
    fold ? 1 : aBatch,
    bBatch,
    transA,
    transB,
  );
  return out;
}

function launchMatmul(
  a: Tensor,
  b: Tensor,
  out: Tensor,
  M: number,
  N: number,
  K: number,
  batch: number,
  aBatch: number,
  bBatch: number,
  transA: boolean,
  transB: boolean,
): void {
  const sa = transA ? [1, M] : [K, 1]; // (m, k) strides
  const sb = transB ? [1, K] : [N, 1]; // (k, n) strides
  const params = {
    M,
    N,
    K,
    batch,
    sab: aBatch === 1 ? 0 : M * K,
    sam: sa[0],
    sak: sa[1],
    sbb: bBatch === 1 ? 0 : K * N,
    sbk: sb[0],
    sbn: sb[1],
  };
  const bType = b.dtype as "f32" | "bf16" | "f16";
  // decode shapes (few rows times a weight stored (N, K)): the GEMV kernel
  if (M <= GEMV_MAX_ROWS && transB && !transA && batch === 1 && K % 4 === 0) {
    const rows = M === 1 ? 1 : 4;
    launch(
      gemvKernel(bType, rows, weightsPerLoad(bType, K)),
      { a4: a, b, c: out },
      { M, N, K },
      Math.ceil(M / rows) * Math.ceil(N / gemvColumns("none")),
    );
    return;
  }
  // vec4 fast path: the contiguous axis of each operand and K are multiples of 4
  if (vec4Fits(M, N, K, transA, transB)) {
    const wy = tileRowsPerGroup(M);
    launch(matmulVec4Kernel(transA, transB, bType, false, wy), { a4: a, b, c: out }, params, [
      Math.ceil(N / 64),
      Math.ceil(M / (8 * wy)),
      batch,
    ]);
    return;
  }
  const vecB = b.dtype === "f32" && !transB && N % 4 === 0;
  const { tm, tn, wx, wy } = MM.tile;
  launch(matmulKernel(vecB, bType), { a, b, c: out }, params, [
    Math.ceil(N / (tn * wx)),
    Math.ceil(M / (tm * wy)),
    batch,
  ]);
}

/** M when x (..., K) and W (N, K) take the GEMV (at most GEMV_MAX_ROWS rows, K % 4 == 0), else 0. */
function gemvRows(x: Tensor, w: Tensor): number {
  const K = x.shape.at(-1)!;
  const M = x.size / Math.max(1, K);
  const fits = M <= GEMV_MAX_ROWS && K % 4 === 0 && w.shape.length === 2 && w.shape[1] === K &&
    x.dtype === "f32" && w.dtype !== "i32";
  return fits ? M : 0;
}

/**
 * x·Wᵀ + bias in one GEMV dispatch for decode shapes: x (..., K) of at most
 * GEMV_MAX_ROWS rows, W (N, K), bias (N). Bit-identical to matmul then add.
 * No tape; null when the shape takes the tile kernel.
 */
export function gemvBias(x: Tensor, w: Tensor, bias: Tensor): Tensor | null {
  const M = gemvRows(x, w);
  const [N, K] = w.shape;
  if (M === 0 || bias.dtype !== "f32" || bias.size !== N) return null;
  const out = Tensor.empty([...x.shape.slice(0, -1), N]);
  const rows = M === 1 ? 1 : 4;
  const bType = w.dtype as "f32" | "bf16" | "f16";
  launch(
    gemvKernel(bType, rows, weightsPerLoad(bType, K), "bias"),
    { a4: x, b: w, bias, c: out },
    { M, N, K },
    Math.ceil(M / rows) * Math.ceil(N / gemvColumns("bias")),
  );
  return out;
}

/**
 * Invocation rows per workgroup of the 8x8 tile kernels: 8 (a 64x64 tile),
 * or fewer for a product of few rows, so that no workgroup launches idle rows
 * (a CPU adapter runs them all). Each output's arithmetic is the same.
 */
export function tileRowsPerGroup(M: number): number {
  return M <= 8 ? 1 : M <= 16 ? 2 : M <= 32 ? 4 : 8; // powers of 2: few pipelines to compile
}

/** Whether the 8x8 vec4 kernel takes these sizes and layouts. */
function vec4Fits(M: number, N: number, K: number, transA: boolean, transB: boolean): boolean {
  return K % 4 === 0 && (!transA || M % 4 === 0) && (transB || N % 4 === 0);
}

/**
 * x·Wᵀ + bias with the bias added in the product's store, for inference: the
 * GEMV for up to GEMV_MAX_ROWS rows, the 8x8 tile beyond. Bit-identical to
 * matmul then add. x (..., K), W (N, K), bias (N). No tape; null when neither
 * kernel takes the shape.
 */
export function matmulBias(x: Tensor, w: Tensor, bias: Tensor): Tensor | null {
  const viaGemv = gemvBias(x, w, bias);
  if (viaGemv) return viaGemv;
  const K = x.shape.at(-1)!;
  const M = x.size / Math.max(1, K);
  const [N, Kw] = w.shape;
  if (
    M === 0 || w.shape.length !== 2 || Kw !== K || x.dtype !== "f32" || w.dtype === "i32" ||
    bias.dtype !== "f32" || bias.size !== N || !vec4Fits(M, N, K, false, true)
  ) return null;
  const out = Tensor.empty([...x.shape.slice(0, -1), N]);
  const params = { M, N, K, batch: 1, sab: 0, sam: K, sak: 1, sbb: 0, sbk: 1, sbn: K };
  const wy = tileRowsPerGroup(M);
  launch(
    matmulVec4Kernel(false, true, w.dtype as "f32" | "bf16" | "f16", true, wy),
    { a4: x, b: w, bias, c: out },
    params,
    [Math.ceil(N / 64), Math.ceil(M / (8 * wy)), 1],
  );
  return out;
}

/** M when x (..., K) and W (N, K) take the 8x8 tile for a linear layer, else 0. */
function tileRows(x: Tensor, w: Tensor): number {
  const K = x.shape.at(-1)!;
  const M = x.size / Math.max(1, K);
  const fits = M > 0 && K % 4 === 0 && w.shape.length === 2 && w.shape[1] === K &&
    x.dtype === "f32" && w.dtype !== "i32";
  return fits ? M : 0;
}

/**
 * silu(x·gateᵀ) * (x·upᵀ), the gated MLP's product, in one dispatch
 * (inference): the GEMV for up to GEMV_MAX_ROWS rows, the 8x8 tile beyond.
 * gate and up (N, K) of one dtype. The same bits as two matmuls then
 * siluMul. No tape; null when neither kernel takes the shapes.
 */
export function linearSiluMul(x: Tensor, gate: Tensor, up: Tensor): Tensor | null {
  if (up.shape.join() !== gate.shape.join() || up.dtype !== gate.dtype) return null;
  const viaGemv = gemvSiluMul(x, gate, up);
  if (viaGemv) return viaGemv;
  const M = tileRows(x, gate);
  if (M === 0) return null;
  const N = gate.shape[0];
  const out = Tensor.empty([...x.shape.slice(0, -1), N]);
  const wy = tileRowsPerGroup(M);
  launch(
    linearTileKernel(gate.dtype as "f32" | "bf16" | "f16", "siluMul", false, wy),
    { a4: x, b: gate, b2: up, c: out },
    { M, N, K: x.shape.at(-1)! },
    [Math.ceil(N / 64), Math.ceil(M / (8 * wy)), 1],
  );
  return out;
}

/**
 * An attention layer's q, k and v projections of x in one dispatch
 * (inference): the GEMV for up to GEMV_MAX_ROWS rows, the 8x8 tile beyond.
 * The weights (N, K) of one dtype, and all three biases or none. The same
 * bits as three linear layers. No tape; null when neither kernel takes them.
 */
export function linearQkv(
  x: Tensor,
  weights: [Tensor, Tensor, Tensor],
  biases: [Tensor, Tensor, Tensor] | null,
): [Tensor, Tensor, Tensor] | null {
  const viaGemv = gemvQkv(x, weights, biases);
  if (viaGemv) return viaGemv;
  const M = tileRows(x, weights[0]);
  const fits = M > 0 &&
    weights.every((w) => tileRows(x, w) === M && w.dtype === weights[0].dtype) &&
    (biases === null ||
      biases.every((b, p) => b.dtype === "f32" && b.size === weights[p].shape[0]));
  if (!fits) return null;
  const [Nq, Nk, Nv] = weights.map((w) => w.shape[0]);
  const [qb, kb, vb] = [Nq, Nk, Nv].map((n) => Math.ceil(n / 8));
  const outs = weights.map((w) => Tensor.empty([...x.shape.slice(0, -1), w.shape[0]]));
  const [wq, wk, wv] = weights;
  const [cq, ck, cv] = outs;
  const wy = tileRowsPerGroup(M);
  launch(
    linearTileKernel(wq.dtype as "f32" | "bf16" | "f16", "qkv", biases !== null, wy),
    {
      a4: x,
      wq,
      wk,
      wv,
      cq,
      ck,
      cv,
      ...(biases ? { bq: biases[0], bk: biases[1], bv: biases[2] } : {}),
    },
    { M, K: x.shape.at(-1)!, Nq, Nk, Nv, qb, kb, vb },
    [Math.ceil((qb + kb + vb) / 8), Math.ceil(M / (8 * wy)), 1],
  );
  return [cq, ck, cv];
}

/**
 * silu(x·gateᵀ) * (x·upᵀ), the gated MLP's product, in one GEMV dispatch for
 * decode shapes: x (..., K) of at most GEMV_MAX_ROWS rows, gate and up (N, K)
 * of one dtype. The same bits as two matmuls then siluMul. No tape; null when
 * the shape takes the tile kernel.
 */
export function gemvSiluMul(x: Tensor, gate: Tensor, up: Tensor): Tensor | null {
  const M = gemvRows(x, gate);
  const [N, K] = gate.shape;
  if (M === 0 || up.shape.join() !== gate.shape.join() || up.dtype !== gate.dtype) return null;
  const out = Tensor.empty([...x.shape.slice(0, -1), N]);
  const rows = M === 1 ? 1 : 4;
  const bType = gate.dtype as "f32" | "bf16" | "f16";
  launch(
    gemvKernel(bType, rows, weightsPerLoad(bType, K), "siluMul"),
    { a4: x, b: gate, b2: up, c: out },
    { M, N, K },
    Math.ceil(M / rows) * Math.ceil(N / gemvColumns("siluMul")),
  );
  return out;
}

/**
 * An attention layer's q, k and v projections of x in one GEMV dispatch for
 * decode shapes: x (..., K) of at most GEMV_MAX_ROWS rows, the weights (N, K)
 * of one dtype, and all three biases or none. The same bits as three linear
 * layers. No tape; null when the shapes take the tile kernel.
 */
export function gemvQkv(
  x: Tensor,
  weights: [Tensor, Tensor, Tensor],
  biases: [Tensor, Tensor, Tensor] | null,
): [Tensor, Tensor, Tensor] | null {
  const M = gemvRows(x, weights[0]);
  const K = x.shape.at(-1)!;
  const fits = M > 0 &&
    weights.every((w) => gemvRows(x, w) === M && w.dtype === weights[0].dtype) &&
    (biases === null ||
      biases.every((b, p) => b.dtype === "f32" && b.size === weights[p].shape[0]));
  if (!fits) return null;
  const [Nq, Nk, Nv] = weights.map((w) => w.shape[0]);
  const outs = weights.map((w) => Tensor.empty([...x.shape.slice(0, -1), w.shape[0]]));
  const rows = M === 1 ? 1 : 4;
  const bType = weights[0].dtype as "f32" | "bf16" | "f16";
  const cols = gemvColumns(biases ? "bias" : "none");
  const count = (N: number) => Math.ceil(M / rows) * Math.ceil(N / cols);
  const [wq, wk, wv] = weights;
  const [cq, ck, cv] = outs;
  launch(
    gemvQkvKernel(bType, rows, weightsPerLoad(bType, K), biases !== null),
    {
      a4: x,
      wq,
      wk,
      wv,
      cq,
      ck,
      cv,
      ...(biases ? { bq: biases[0], bk: biases[1], bv: biases[2] } : {}),
    },
    { M, Nq, Nk, Nv, K, nq: count(Nq), nk: count(Nk) },
    count(Nq) + count(Nk) + count(Nv),
  );
  return [cq, ck, cv];
}

/** Matrix product of the last two axes, batched over the leading ones. */
export function matmul(a: Tensor, b: Tensor, options: MatmulOptions = {}): Tensor {
  const { transA = false, transB = false } = options;
  const out = matmulRaw(a, b, transA, transB);
  if (b.dtype !== "f32" && b.requiresGrad) {
    throw new Error(`matmul: a ${b.dtype} operand is stored precision only; train in f32`);
  }
  const shared = b.shape.length === 2 && a.shape.length > 2;
  return record(out, {
    op: "matmul",
    inputs: [a, b],
    backward: (g) => {
      // C = op(A)·op(B): dop(A) = dC·op(B)ᵀ, dop(B) = op(A)ᵀ·dC
      // no product for an input that needs no gradient (a frozen weight under LoRA)
      const ga = !a.requiresGrad ? null : transA
        ? matmulRaw(b, g, transB, true) // dA = op(B)·dCᵀ
        : matmulRaw(g, b, false, !transB);
      if (!b.requiresGrad) return [ga, null];
      let gb: Tensor;
      if (shared && !transA) {
        // b is shared by every batch: fold the batch into the rows of A and dC.
        const a2 = a.view([numel(a.shape.slice(0, -1)), a.shape.at(-1)!]);
        const g2 = g.view([numel(g.shape.slice(0, -1)), g.shape.at(-1)!]);
        gb = transB ? matmulRaw(g2, a2, true, false) : matmulRaw(a2, g2, true, false);
        a2.dispose();
        g2.dispose();
      } else {
        gb = transB
          ? matmulRaw(g, a, true, transA) // dB = dCᵀ·op(A)
          : matmulRaw(a, g, !transA, false);
        if (shared) {
          const per = gb; // (batch, ...) partial gradients of the shared b
          gb = sumBatch(per);
          per.dispose();
        }
      }
      return [ga, gb];
    },
  });
}

function sumBatch(x: Tensor): Tensor {
  const v = x.view([numel(x.shape.slice(0, -2)), ...x.shape.slice(-2)]);
  const s = sum(v, { axis: 0 });
  v.dispose();
  return s;
}

export const matmulReference = (a: NDArray, b: NDArray, options: MatmulOptions = {}): NDArray => {
  const { transA = false, transB = false } = options;
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const [M, K] = transA ? [ac, ar] : [ar, ac];
  const N = transB ? br : bc;
  const batchShape = a.shape.slice(0, -2);
  const batch = numel(batchShape);
  const bShared = b.shape.length === 2;
  const out = new Float64Array(batch * M * N);
  for (let z = 0; z < batch; z++) {
    const ao = z * M * K;
    const bo = bShared ? 0 : z * K * N;
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = a.data[ao + (transA ? k * M + m : m * K + k)];
          const bv = b.data[bo + (transB ? n * K + k : k * N + n)];
          s += av * bv;
        }
        out[z * M * N + m * N + n] = s;
      }
    }
  }
  return { shape: [...batchShape, M, N], data: out };
};
