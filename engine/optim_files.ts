/**
 * AdamW's state in a safetensors file: m.i and v.i per parameter (f32) and
 * the step count in the metadata, written atomically.
 * @module
 */
import type { AdamW } from "./optim.ts";
import { readSafetensors, writeSafetensors } from "./safetensors.ts";

/** Writes the optimizer's moments and step count to `path`. */
export async function saveOptimizer(opt: AdamW, path: string): Promise<void> {
  const { tensors, step } = await opt.state();
  await writeSafetensors(path, tensors, { step: String(step) });
}

/**
 * Restores what saveOptimizer wrote into `opt` (shapes checked, a mismatch
 * named); `step` stands in for files written without the step count.
 */
export async function loadOptimizer(opt: AdamW, path: string, step?: number): Promise<void> {
  const { tensors, metadata } = await readSafetensors(path);
  opt.restore(path, tensors, metadata.step === undefined ? step ?? null : Number(metadata.step));
}
