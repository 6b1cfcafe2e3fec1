/**
 * EM-FT's objective: the token entropy of the model's own next-token
 * distributions over response positions (EM_SPEC.md). The sampled tokens are
 * held fixed: the gradient flows through each position's entropy only.
 * @module
 */
import { entropy, mul, mulScalar, sum } from "../engine/ops/mod.ts";
import { Tensor } from "../engine/tensor.ts";

/** "mean": over response tokens (the code's default); "sum": summed, divided by the sequences. */
export type Reduce = "mean" | "sum";

/**
 * L = sum_t H(p_t) * mask_t / D with D = sum(mask) ("mean"), the number of
 * sequences ("sum"), or a given number (a micro-batch's share of a larger batch).
 * logits (B, T, V); mask (B, T) with 1 where a position scores a response token.
 */
export function tokenEntropyLoss(
  logits: Tensor,
  mask: ArrayLike<number>,
  reduce: Reduce | number = "mean",
): Tensor {
  const [B, T] = logits.shape;
  if (mask.length !== B * T) {
    throw new Error(`tokenEntropyLoss: mask has ${mask.length} values, expected ${B}x${T}`);
  }
  let count = 0;
  for (let i = 0; i < mask.length; i++) count += mask[i];
  const divisor = typeof reduce === "number" ? reduce : reduce === "mean" ? Math.max(count, 1) : B;
  const m = Tensor.from(mask, [B, T]);
  return mulScalar(sum(mul(entropy(logits), m)), 1 / divisor);
}

/**
 * The response mask of a (B, T) batch whose prompts are left-padded to a
 * common length P (columns [0, P)): position t scores token t+1, so it is 1 for
 * t in [P-1, T-2] where both t and t+1 are real tokens.
 */
export function responseMask(
  attentionMask: ArrayLike<number>,
  batch: number,
  seq: number,
  promptLength: number,
): number[] {
  const out = new Array(batch * seq).fill(0);
  for (let b = 0; b < batch; b++) {
    for (let t = Math.max(promptLength - 1, 0); t < seq - 1; t++) {
      if (attentionMask[b * seq + t] && attentionMask[b * seq + t + 1]) out[b * seq + t] = 1;
    }
  }
  return out;
}
