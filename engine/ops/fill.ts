/** A tensor filled with one value, without an upload. @module */
import { fillKernel } from "../../kernels/elementwise.ts";
import { randomNormalKernel } from "../../kernels/random.ts";
import { launch } from "../launch.ts";
import { Tensor } from "../tensor.ts";

/** An f32 tensor of `shape` filled with `value` on the GPU. */
export function fill(shape: readonly number[], value: number): Tensor {
  const t = Tensor.empty(shape);
  launch(fillKernel, { out: t }, { n: t.size, value }, t.size);
  return t;
}

/** Normal(mean, std) values generated on the GPU from a seed (f32, or bf16 storage). */
export function randomNormal(
  shape: readonly number[],
  options: { seed?: number; mean?: number; std?: number; dtype?: "f32" | "bf16" } = {},
): Tensor {
  const dtype = options.dtype ?? "f32";
  const t = Tensor.empty(shape, dtype);
  const words = dtype === "f32" ? t.size : Math.ceil(t.size / 2);
  launch(randomNormalKernel(dtype), { out: t }, {
    n: t.size,
    seed: (options.seed ?? 0) >>> 0,
    mean: options.mean ?? 0,
    stddev: options.std ?? 1,
  }, words);
  return t;
}
