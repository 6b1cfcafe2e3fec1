/**
 * EM-FT's objective: the token entropy of the model's own next-token
 * distributions over response positions (EM_SPEC.md). The sampled tokens are
 * held fixed: the gradient flows through each position's entropy only.
 * @module
 */
import { div, entropy, maxScalar, mul, mulScalar, sum } from "../engine/ops/mod.ts";
import { Tensor } from "../engine/tensor.ts";

/** "mean": over response tokens (the code's default); "sum": summed, divided by the sequences. */
export type Reduce = "mean" | "sum";

/**
 * L = sum_t H(p_t) * mask_t / D with D = sum(mask) ("mean"), the number of
 * sequences ("sum"), or a given number (a micro-batch's share of a larger batch).
 * logits (B, T, V); mask (B, T) with 1 where a position scores a response token,
 * as numbers or as an f32 Tensor (then D is counted on the GPU).
 */
export function tokenEntropyLoss(
  logits: Tensor,
  mask: ArrayLike<number> | Tensor,
  reduce: Reduce | number = "mean",
): Tensor {
  if (logits.shape.length !== 3) {
    throw new Error(`tokenEntropyLoss: logits must be (B, T, V), got [${logits.shape}]`);
  }
  const [B, T] = logits.shape;
  const isTensor = mask instanceof Tensor;
  const size = isTensor ? mask.size : mask.length;
  if (size !== B * T || (isTensor && mask.dtype !== "f32")) {
    throw new Error(
      `tokenEntropyLoss: mask must hold ${B}x${T} values (numbers, or an f32 Tensor), got ${
        isTensor ? `a ${mask.dtype} Tensor [${mask.shape}]` : `${size} values`
      }`,
    );
  }
  const m = isTensor ? mask.view([B, T]) : Tensor.from(mask, [B, T]);
  const total = sum(mul(entropy(logits), m));
  if (typeof reduce === "number") return mulScalar(total, 1 / reduce);
  if (reduce === "sum") return mulScalar(total, 1 / B);
  if (isTensor) return div(total, maxScalar(sum(m), 1));
  let count = 0;
  for (let i = 0; i < size; i++) count += (mask as ArrayLike<number>)[i];
  return mulScalar(total, 1 / Math.max(count, 1));
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
