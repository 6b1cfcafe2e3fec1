/**
 * Shape ops: reshape (a view), permute/transpose, slice, concat, broadcastTo,
 * cast. All data movement goes through one strided-copy kernel.
 * @module
 */
import { castToF32Kernel, stridedCopyKernel } from "../../kernels/elementwise.ts";
import { MAX_RANK } from "../../kernels/common.ts";
import { record } from "../autograd.ts";
import { numel, Tensor } from "../tensor.ts";
import { launch } from "../launch.ts";
import { sumTo } from "./_raw.ts";
import type { NDArray } from "./_reference.ts";
import { broadcastStrides, normAxis, stridesOf } from "./_shape.ts";
import { fill } from "./fill.ts";

/**
 * dst[dstOffset + sum i*dstStrides] = src[srcOffset + sum i*srcStrides] over `shape`
 * (32-bit elements; no tape).
 */
export function stridedCopy(
  src: Tensor,
  srcOffset: number,
  srcStrides: readonly number[],
  dst: Tensor,
  dstOffset: number,
  dstStrides: readonly number[],
  shape: readonly number[],
): void {
  if (shape.length > MAX_RANK) throw new Error(`copy: rank ${shape.length} > ${MAX_RANK}`);
  launch(stridedCopyKernel(src.dtype === "f32" ? "f32" : "u32"), { src, dst }, {
    n: numel(shape),
    rank: shape.length,
    srcOffset,
    dstOffset,
    shape,
    srcStrides,
    dstStrides,
  }, numel(shape));
}

function check32(x: Tensor, op: string): void {
  if (x.dtype !== "f32" && x.dtype !== "i32") {
    throw new Error(`${op}: expects f32 or i32, got ${x.dtype} (cast it first)`);
  }
}

/** Same data, new shape; one dimension may be -1. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const known = shape.filter((d) => d !== -1);
  const inferred = shape.map((d) => (d === -1 ? x.size / Math.max(1, numel(known)) : d));
  if (numel(inferred) !== x.size || !inferred.every(Number.isInteger)) {
    throw new Error(`reshape: cannot reshape [${x.shape}] to [${shape}]`);
  }
  const y = x.view(inferred);
  return record(y, { op: "reshape", inputs: [x], backward: (g) => [g.view(x.shape)] });
}

/** Reorders axes: out.shape[i] = x.shape[perm[i]]. */
export function permute(x: Tensor, perm: readonly number[]): Tensor {
  check32(x, "permute");
  const r = x.shape.length;
  if (perm.length !== r || [...perm].sort().some((p, i) => p !== i)) {
    throw new Error(`permute: [${perm}] is not a permutation of ${r} axes`);
  }
  const shape = perm.map((p) => x.shape[p]);
  // only size-1 axes move (heads of one decoded token): the same bytes, so a view
  const moved = perm.filter((p) => x.shape[p] !== 1);
  if (moved.every((p, i) => i === 0 || moved[i - 1] < p)) return reshape(x, shape);
  const y = Tensor.empty(shape, x.dtype);
  const xs = stridesOf(x.shape);
  stridedCopy(x, 0, perm.map((p) => xs[p]), y, 0, stridesOf(shape), shape);
  const inverse = perm.map((_, i) => perm.indexOf(i));
  return record(y, { op: "permute", inputs: [x], backward: (g) => [permute(g, inverse)] });
}

/** Swaps two axes. */
export function transpose(x: Tensor, axis0 = -2, axis1 = -1): Tensor {
  const r = x.shape.length;
  const a = normAxis(axis0, r, "transpose");
  const b = normAxis(axis1, r, "transpose");
  const perm = x.shape.map((_, i) => (i === a ? b : i === b ? a : i));
  return permute(x, perm);
}

/** x[..., start:end, ...] along one axis. */
export function slice(x: Tensor, axis: number, start: number, end: number): Tensor {
  check32(x, "slice");
  const ax = normAxis(axis, x.shape.length, "slice");
  const n = x.shape[ax];
  if (!(0 <= start && start <= end && end <= n)) {
    throw new Error(`slice: [${start}, ${end}) out of range for axis ${axis} of size ${n}`);
  }
  const shape = x.shape.map((d, i) => (i === ax ? end - start : d));
  const y = Tensor.empty(shape, x.dtype);
  const xs = stridesOf(x.shape);
  stridedCopy(x, start * xs[ax], xs, y, 0, stridesOf(shape), shape);
  return record(y, {
    op: "slice",
    inputs: [x],
    // the gradient is g placed in a zero tensor of x's shape
    backward: (g) => {
      const gx = fill(x.shape, 0);
      stridedCopy(g, 0, stridesOf(shape), gx, start * xs[ax], xs, shape);
      return [gx];
    },
  });
}

/** Joins tensors along an axis. */
export function concat(xs: Tensor[], axis: number): Tensor {
  if (xs.length === 0) throw new Error("concat: no tensors");
  const r = xs[0].shape.length;
  const ax = normAxis(axis, r, "concat");
  for (const t of xs) {
    check32(t, "concat");
    if (
      t.dtype !== xs[0].dtype || t.shape.length !== r ||
      t.shape.some((d, i) => i !== ax && d !== xs[0].shape[i])
    ) {
      throw new Error(
        `concat: [${t.shape}] ${t.dtype} does not match [${xs[0].shape}] ${
          xs[0].dtype
        } off axis ${axis}`,
      );
    }
  }
  const shape = xs[0].shape.map((d, i) => (i === ax ? xs.reduce((s, t) => s + t.shape[ax], 0) : d));
  const y = Tensor.empty(shape, xs[0].dtype);
  const ys = stridesOf(shape);
  const starts: number[] = [];
  let at = 0;
  for (const t of xs) {
    starts.push(at);
    stridedCopy(t, 0, stridesOf(t.shape), y, at * ys[ax], ys, t.shape);
    at += t.shape[ax];
  }
  return record(y, {
    op: "concat",
    inputs: xs,
    backward: (g) => xs.map((t, i) => slice(g, ax, starts[i], starts[i] + t.shape[ax])),
  });
}

/** Materialises x broadcast to `shape` (gradient: sum over the broadcast axes). */
export function broadcastTo(x: Tensor, shape: readonly number[]): Tensor {
  check32(x, "broadcastTo");
  const y = Tensor.empty(shape, x.dtype);
  stridedCopy(x, 0, broadcastStrides(x.shape, shape), y, 0, stridesOf(shape), shape);
  return record(y, {
    op: "broadcastTo",
    inputs: [x],
    backward: (g) => [sumTo(g, x.shape)],
  });
}

/** Converts bf16/f16/i32 to f32 (f32 is returned as a view). Gradient passes through for floats. */
export function cast(x: Tensor, dtype: "f32"): Tensor {
  if (dtype !== "f32") throw new Error(`cast: only to f32 is supported, not ${dtype}`);
  if (x.dtype === "f32") return x.view(x.shape);
  const y = Tensor.empty(x.shape, "f32");
  launch(castToF32Kernel(x.dtype), { src: x, out: y }, { n: x.size }, x.size);
  return y;
}

export const shapeReference = {
  permute: (x: NDArray, perm: number[]): NDArray => {
    const shape = perm.map((p) => x.shape[p]);
    const xs = stridesOf(x.shape);
    const os = stridesOf(shape);
    const out = new Float64Array(x.data.length);
    for (let i = 0; i < out.length; i++) {
      let rem = i;
      let off = 0;
      for (let d = 0; d < shape.length; d++) {
        const k = Math.floor(rem / os[d]);
        rem -= k * os[d];
        off += k * xs[perm[d]];
      }
      out[i] = x.data[off];
    }
    return { shape, data: out };
  },
  slice: (x: NDArray, axis: number, start: number, end: number): NDArray => {
    const outer = numel(x.shape.slice(0, axis));
    const inner = numel(x.shape.slice(axis + 1));
    const n = x.shape[axis];
    const out: number[] = [];
    for (let o = 0; o < outer; o++) {
      for (let k = start; k < end; k++) {
        for (let i = 0; i < inner; i++) out.push(x.data[(o * n + k) * inner + i]);
      }
    }
    return {
      shape: x.shape.map((d, i) => (i === axis ? end - start : d)),
      data: Float64Array.from(out),
    };
  },
  concat: (xs: NDArray[], axis: number): NDArray => {
    const outer = numel(xs[0].shape.slice(0, axis));
    const inner = numel(xs[0].shape.slice(axis + 1));
    const out: number[] = [];
    for (let o = 0; o < outer; o++) {
      for (const x of xs) {
        const n = x.shape[axis];
        for (let j = 0; j < n * inner; j++) out.push(x.data[o * n * inner + j]);
      }
    }
    const shape = xs[0].shape.map((
      d,
      i,
    ) => (i === axis ? xs.reduce((s, x) => s + x.shape[axis], 0) : d));
    return { shape, data: Float64Array.from(out) };
  },
};
