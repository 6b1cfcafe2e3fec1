/**
 * x·Wᵀ (+ bias) with W a frozen quantized matrix (engine/quant): the GEMV
 * for up to GEMV_MAX_ROWS rows, the 8x8 tile beyond, the parts of a
 * row-split W concatenated; act-order weights gather x's columns first.
 * Backward gives x its gradient (dY·W, dequantized in registers); W takes
 * none. The CPU reference multiplies by the float64 dequantization.
 * @module
 */
import {
  gatherColumnsKernel,
  QGEMV_COLUMNS,
  quantGemvKernel,
  quantGradKernel,
  quantTileKernel,
} from "../../kernels/quant.ts";
import { record } from "../autograd.ts";
import { launch } from "../launch.ts";
import { Tensor } from "../tensor.ts";
import { dequantizeMatrix, groupsOf, type PackedMatrix } from "../quant/format.ts";
import type { QuantizedPart, QuantizedWeight } from "../quant/weight.ts";
import type { NDArray } from "./_reference.ts";
import { add } from "./elementwise.ts";
import { GEMV_MAX_ROWS, tileRowsPerGroup } from "./matmul.ts";
import { concat, reshape } from "./shape.ts";

/** x (..., K) · Wᵀ + bias -> (..., N). */
export function quantLinear(x: Tensor, w: QuantizedWeight, bias: Tensor | null = null): Tensor {
  const K = x.shape.at(-1)!;
  if (x.dtype !== "f32" || K !== w.cols) {
    throw new Error(`quantLinear: x must be f32 (..., ${w.cols}), got ${x.dtype} [${x.shape}]`);
  }
  const lead = x.shape.slice(0, -1);
  const M = lead.reduce((a, b) => a * b, 1);
  let x2 = reshape(x, [M, K]);
  if (w.perm) x2 = gatherColumns(x2, w.perm, w.order!);
  // a frozen bias of an unsplit W is added in the kernel's store
  const fused = w.parts.length === 1 && bias && !bias.requiresGrad ? bias : null;
  const ys = w.parts.map((part) => partProduct(x2, part, w, fused));
  let y = ys.length === 1 ? ys[0] : concat(ys, -1);
  if (bias && !fused) y = add(y, bias);
  return reshape(y, [...lead, w.rows]);
}

/** x (M, K) · part(W)ᵀ (+ bias) -> (M, rows of the part). */
function partProduct(
  x: Tensor,
  part: QuantizedPart,
  w: QuantizedWeight,
  bias: Tensor | null,
): Tensor {
  const [M, K] = x.shape;
  const N = part.rows;
  const params = { M, N, K, G: groupsOf(K, w.groupSize), gs: w.groupSize };
  const out = Tensor.empty([M, N]);
  const inputs = { a4: x, qw: part.q, sz: part.sz, ...(bias ? { bias } : {}) };
  if (M <= GEMV_MAX_ROWS) {
    const rows = M === 1 ? 1 : 4;
    launch(
      quantGemvKernel(w.bits, rows, bias !== null),
      { ...inputs, c: out },
      params,
      Math.ceil(M / rows) * Math.ceil(N / QGEMV_COLUMNS),
    );
  } else {
    const wy = tileRowsPerGroup(M);
    launch(quantTileKernel(w.bits, bias !== null, wy), { ...inputs, c: out }, params, [
      Math.ceil(N / 64),
      Math.ceil(M / (8 * wy)),
      1,
    ]);
  }
  return record(out, {
    op: "quant_matmul",
    inputs: [x],
    backward: (g) => {
      const dx = Tensor.empty([M, K]);
      const words = K / (32 / w.bits);
      launch(
        quantGradKernel(w.bits),
        { dy: g, qw: part.q, sz: part.sz, dx },
        params,
        Math.ceil(M / 4) * words,
      );
      return [dx];
    },
  });
}

/** x (M, K) with columns gathered: out[m, j] = x[m, perm[j]]; `perm` a permutation (on the GPU as `idx`). */
export function gatherColumns(x: Tensor, idx: Tensor, perm: Int32Array): Tensor {
  const [M, K] = x.shape;
  const out = Tensor.empty([M, K]);
  launch(gatherColumnsKernel, { x, idx, out }, { n: M * K, K }, M * K);
  return record(out, {
    op: "gather_columns",
    inputs: [x],
    keeps: [idx],
    backward: (g) => {
      // a permutation's adjoint is the inverse permutation's gather
      const inverse = new Array(K);
      perm.forEach((v, j) => inverse[v] = j);
      const inv = Tensor.from(inverse, [K], { dtype: "i32" });
      const dx = Tensor.empty([M, K]);
      launch(gatherColumnsKernel, { x: g, idx: inv, out: dx }, { n: M * K, K }, M * K);
      inv.dispose();
      return [dx];
    },
  });
}

/** x (M, K) · dequant(W)ᵀ in float64, input columns in their original order. */
export function quantLinearReference(x: NDArray, w: PackedMatrix): NDArray {
  const [M, K] = x.shape;
  const W = dequantizeMatrix(w);
  const N = w.rows;
  const out = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x.data[m * K + k] * W[n * K + k];
      out[m * N + n] = s;
    }
  }
  return { shape: [M, N], data: out };
}
