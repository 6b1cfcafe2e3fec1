/**
 * Tape-free kernels shared by the ops' forward passes, their backward rules
 * and autograd itself. This module records nothing and imports no op, so
 * every op file (and autograd.ts) may import it without a cycle.
 * @module
 */
import {
  elementwiseKernel,
  elementwiseVec4Kernel,
  type ReadMode,
} from "../../kernels/elementwise.ts";
import { MAX_RANK } from "../../kernels/common.ts";
import { reduceKernel, reduceLoopKernel } from "../../kernels/reduce.ts";
import { launch } from "../launch.ts";
import { numel, Tensor } from "../tensor.ts";
import { broadcastShapes, broadcastStrides, sameShape } from "./_shape.ts";

/** Runs `expr` over broadcast inputs (all f32); no tape. */
export function elementwise(name: string, inputs: Tensor[], expr: string, alpha = 0): Tensor {
  for (const t of inputs) {
    if (t.dtype !== "f32") throw new Error(`${name}: expects f32 inputs, got ${t.dtype}`);
  }
  const shape = inputs.map((t) => t.shape).reduce((a, b) => broadcastShapes(a, b, name));
  if (shape.length > MAX_RANK) throw new Error(`${name}: rank ${shape.length} > ${MAX_RANK}`);
  const out = Tensor.empty(shape);
  const modes = inputs.map((t): ReadMode =>
    sameShape(t.shape, shape) ? "f" : t.size === 1 ? "s" : "b"
  ).join("");
  const names = ["in_a", "in_b", "in_c"];
  const buffers: Record<string, Tensor> = { out };
  if (!modes.includes("b") && out.size % 4 === 0) {
    // streaming: vec4 loads and stores, 16 elements per invocation
    inputs.forEach((t, k) => buffers[names[k]] = t);
    const n4 = out.size / 4;
    launch(elementwiseVec4Kernel(modes, expr), buffers, { n4, alpha }, Math.ceil(n4 / 4), name);
    return out;
  }
  const params: Record<string, number | number[]> = {
    n: out.size,
    rank: shape.length,
    alpha,
    shape: [...shape],
  };
  inputs.forEach((t, k) => {
    buffers[names[k]] = t;
    params[`strides_${names[k].slice(3)}`] = broadcastStrides(t.shape, shape);
  });
  launch(elementwiseKernel(modes, expr), buffers, params, out.size, name);
  return out;
}

/** Reduces x viewed as (outer, n, inner) over n; no tape. */
export function reduceRaw(
  op: "sum" | "max" | "sumsq",
  x: Tensor,
  axis: number,
  keepdim: boolean,
): Tensor {
  if (x.dtype !== "f32") throw new Error(`${op}: expects f32, got ${x.dtype}`);
  const outer = numel(x.shape.slice(0, axis));
  const n = x.shape[axis];
  const inner = numel(x.shape.slice(axis + 1));
  const shape = keepdim
    ? x.shape.map((d, i) => (i === axis ? 1 : d))
    : x.shape.filter((_, i) => i !== axis);
  const out = Tensor.empty(shape);
  const outputs = outer * inner;
  // a workgroup tree only pays off for few, long rows
  if (outputs >= 256 || n <= 1024) {
    launch(reduceLoopKernel(op), { src: x, out }, { outer, n, inner }, outputs);
  } else launch(reduceKernel(op), { src: x, out }, { outer, n, inner }, outputs);
  return out;
}

/** Sums g over broadcast axes so it has `shape` (the gradient of a broadcast); no tape. */
export function sumTo(g: Tensor, shape: readonly number[]): Tensor {
  if (sameShape(g.shape, shape)) return g;
  let cur = g;
  const lead = g.shape.length - shape.length;
  for (let d = 0; d < g.shape.length; d++) {
    const want = d < lead ? 1 : shape[d - lead];
    if (cur.shape[d] !== want) {
      const next = reduceRaw("sum", cur, d, true);
      if (cur !== g) cur.dispose();
      cur = next;
    }
  }
  const out = cur.view(shape);
  if (cur !== g) cur.dispose();
  return out;
}
