/** A tensor filled with one value, without an upload. @module */
import { fillKernel } from "../../kernels/elementwise.ts";
import { randomNormalKernel } from "../../kernels/random.ts";
import { Tensor } from "../tensor.ts";
import { launch1d } from "./_launch.ts";

/** An f32 tensor of `shape` filled with `value` on the GPU. */
export function fill(shape: readonly number[], value: number): Tensor {
  const t = Tensor.empty(shape);
  launch1d(fillKernel, [t], [t.size, { f32: value }], t.size, "fill");
  return t;
}

const randomSource = { f32: randomNormalKernel("f32"), bf16: randomNormalKernel("bf16") };

/** Normal(mean, std) values generated on the GPU from a seed (f32, or bf16 storage). */
export function randomNormal(
  shape: readonly number[],
  options: { seed?: number; mean?: number; std?: number; dtype?: "f32" | "bf16" } = {},
): Tensor {
  const dtype = options.dtype ?? "f32";
  const t = Tensor.empty(shape, dtype);
  const words = dtype === "f32" ? t.size : Math.ceil(t.size / 2);
  const params = [t.size, (options.seed ?? 0) >>> 0, { f32: options.mean ?? 0 }, {
    f32: options.std ?? 1,
  }];
  launch1d(randomSource[dtype], [t], params, words, "random_normal");
  return t;
}
