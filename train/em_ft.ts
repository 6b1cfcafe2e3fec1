/**
 * EM-FT's objective: the token entropy of the model's own next-token
 * distributions over response positions (EM_SPEC.md). The sampled tokens are
 * held fixed: the gradient flows through each position's entropy only.
 * @module
 */
import { div, entropy, maxScalar, mul, mulScalar, sum } from "../engine/ops/mod.ts";
import { Tensor } from "../engine/tensor.ts";
import {
  encodePrompts,
  type Method,
  type Objective,
  packSequences,
  responseMask,
  rolloutLogprobsAt,
  rollouts,
  scoredBatch,
} from "./objective.ts";

export { responseMask };

/** "mean": over response tokens (the code's default); "sum": summed, divided by the sequences. */
export type Reduce = "mean" | "sum";

/** EM-FT's loss at each position: H(softmax(z)). logits (n, V) -> (n). */
export function emFtPositionLoss(logits: Tensor): Tensor {
  return entropy(logits);
}

export interface EmFtOptions {
  /** Responses sampled per prompt. */
  nSamples: number;
  reduce: Reduce;
}

/** EM-FT: N samples per prompt from the model itself, then their token entropy. */
export function emFtObjective(options: EmFtOptions): Objective {
  return {
    name: "em-ft",
    normalizer: options.reduce === "mean" ? "tokens" : "sequences",
    async makeBatch(ctx, examples) {
      const r = await rollouts(ctx, encodePrompts(ctx, examples), options.nSamples);
      const batch = scoredBatch(packSequences(r.prompts, r.responses, ctx.pad));
      batch.sampledTokens = r.responses.reduce((s, x) => s + x.length, 0);
      batch.temperature = ctx.temperature;
      if (r.logprobs) batch.data.rolloutLogp = rolloutLogprobsAt(batch, r.logprobs);
      return batch;
    },
    positionLoss: ({ logits }) => ({ loss: emFtPositionLoss(logits) }),
  };
}

export const emFt: Method<EmFtOptions> = {
  summary: "minimise the token entropy of the model's own sampled responses",
  samples: true,
  answersNeeded: () => null,
  objective: ({ options }) => Promise.resolve(emFtObjective(options)),
};

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
  const total = sum(mul(emFtPositionLoss(logits), m));
  if (typeof reduce === "number") return mulScalar(total, 1 / reduce);
  if (reduce === "sum") return mulScalar(total, 1 / B);
  if (isTensor) return div(total, maxScalar(sum(m), 1));
  let count = 0;
  for (let i = 0; i < size; i++) count += (mask as ArrayLike<number>)[i];
  return mulScalar(total, 1 / Math.max(count, 1));
}
