/** Reductions over an axis: sum, mean, max. @module */
import { record } from "../autograd.ts";
import type { Tensor } from "../tensor.ts";
import { reduceRaw } from "./_raw.ts";
import { type NDArray, reduceAxis } from "./_reference.ts";
import { normAxis } from "./_shape.ts";
import { equal, mul, mulScalar } from "./elementwise.ts";
import { broadcastTo } from "./shape.ts";

/** Options of reductions: an axis (all elements when omitted) and keepdim. */
export interface ReduceOptions {
  axis?: number;
  keepdim?: boolean;
}

function resolve(x: Tensor, options: ReduceOptions, op: string): [Tensor, number, boolean] {
  if (options.axis === undefined) return [x.view([x.size]), 0, false];
  return [x, normAxis(options.axis, x.shape.length, op), options.keepdim ?? false];
}

/** Sum over an axis, or of all elements. */
export function sum(x: Tensor, options: ReduceOptions = {}): Tensor {
  const [v, axis, keepdim] = resolve(x, options, "sum");
  const y = reduceRaw("sum", v, axis, keepdim);
  if (v !== x) v.dispose();
  return record(y, {
    op: "sum",
    inputs: [x],
    // dy/dx = 1: broadcast g back over the reduced axis
    backward: (g) => [expandTo(g, x.shape, options.axis === undefined ? null : axis)],
  });
}

/** Mean over an axis, or of all elements. */
export function mean(x: Tensor, options: ReduceOptions = {}): Tensor {
  const n = options.axis === undefined
    ? x.size
    : x.shape[normAxis(options.axis, x.shape.length, "mean")];
  const s = sum(x, options);
  const m = mulScalar(s, 1 / n);
  return m;
}

/** Max over an axis (gradient to every position equal to the max). */
export function max(x: Tensor, options: ReduceOptions = {}): Tensor {
  const [v, axis, keepdim] = resolve(x, options, "max");
  const y = reduceRaw("max", v, axis, keepdim);
  if (v !== x) v.dispose();
  return record(y, {
    op: "max",
    inputs: [x],
    backward: (g) => {
      const all = options.axis === undefined ? null : axis;
      const yb = expandTo(y, x.shape, all);
      const gb = expandTo(g, x.shape, all);
      return [mul(gb, equal(x, yb))];
    },
  });
}

/** Sum of squares of all elements (one value), no tape: for gradient norms. */
export function sumSquares(x: Tensor): Tensor {
  const v = x.view([x.size]);
  const y = reduceRaw("sumsq", v, 0, false);
  v.dispose();
  return y;
}

/** Broadcasts g (the reduced shape) back to `shape`. */
function expandTo(g: Tensor, shape: readonly number[], axis: number | null): Tensor {
  const kept = axis === null ? shape.map(() => 1) : shape.map((d, i) => (i === axis ? 1 : d));
  const gk = g.view(kept);
  const out = broadcastTo(gk, shape);
  gk.dispose();
  return out;
}

type ReduceRef = (x: NDArray, axis: number, keepdim?: boolean) => NDArray;
export const reduceReference: { sum: ReduceRef; max: ReduceRef; mean: ReduceRef } = {
  sum: (x: NDArray, axis: number, keepdim = false) =>
    reduceAxis(x, axis, (a, v) => a + v, 0, keepdim),
  max: (x: NDArray, axis: number, keepdim = false) =>
    reduceAxis(x, axis, Math.max, -Infinity, keepdim),
  mean: (x: NDArray, axis: number, keepdim = false) => {
    const s = reduceAxis(x, axis, (a, v) => a + v, 0, keepdim);
    return { shape: s.shape, data: s.data.map((v) => v / x.shape[axis]) };
  },
};
