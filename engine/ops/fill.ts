/** A tensor filled with one value, without an upload. @module */
import { fillKernel } from "../../kernels/elementwise.ts";
import { Tensor } from "../tensor.ts";
import { launch1d } from "./_launch.ts";

/** An f32 tensor of `shape` filled with `value` on the GPU. */
export function fill(shape: readonly number[], value: number): Tensor {
  const t = Tensor.empty(shape);
  launch1d(fillKernel, [t], [t.size, { f32: value }], t.size, "fill");
  return t;
}
