/** How many NaN/Inf values tensors hold (no gradient): a load-time check of weights. @module */
import { FINITE_WORDS_PER_THREAD, nonFiniteCountKernel } from "../../kernels/finite.ts";
import { Tensor } from "../tensor.ts";
import { launch } from "../launch.ts";

const KIND = { f32: 0, bf16: 1, f16: 2 } as const;

/**
 * The number of NaN/Inf elements of each tensor (f32, bf16 or f16), counted on
 * the GPU with one pass over the data and one readback for the whole list.
 */
export async function nonFiniteCounts(tensors: Tensor[]): Promise<number[]> {
  if (tensors.length === 0) return [];
  const counts = Tensor.zeros([tensors.length], { dtype: "i32" });
  try {
    tensors.forEach((t, slot) => {
      if (t.dtype === "i32") throw new Error("nonFiniteCounts: i32 tensors are always finite");
      const words = t.dtype === "f32" ? t.size : Math.ceil(t.size / 2);
      const threads = Math.ceil(words / FINITE_WORDS_PER_THREAD);
      launch(nonFiniteCountKernel, { x: t, counts }, { words, kind: KIND[t.dtype], slot }, threads);
    });
    return Array.from(await counts.toArray());
  } finally {
    counts.dispose();
  }
}

/** CPU reference: NaN/Inf elements of each array. */
export function nonFiniteCountsReference(arrays: ArrayLike<number>[]): number[] {
  return arrays.map((a) => Array.from(a).filter((v) => !Number.isFinite(v)).length);
}
