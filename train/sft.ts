/**
 * SFT: cross-entropy of the response tokens given the prompt (prompt and
 * padding masked), the paper's supervised baseline and how the demo model is made.
 * @module
 */
import { mul, mulScalar, neg, sum, tokenLogProb } from "../engine/ops/mod.ts";
import { Tensor } from "../engine/tensor.ts";
import { checkExampleFits } from "./data.ts";
import { encodePrompts, type Objective, packSequences, scoredBatch } from "./objective.ts";

/** SFT's loss at each position: -log p(target). logits (n, V), targets (n) i32 -> (n). */
export function sftPositionLoss(logits: Tensor, targets: Tensor): Tensor {
  return neg(tokenLogProb(logits, targets));
}

/** SFT: the labeled answer (and eos) after each prompt, cross-entropy per response token. */
export function sftObjective(): Objective {
  return {
    name: "sft",
    normalizer: "tokens",
    makeBatch(ctx, examples) {
      const tok = ctx.model.tokenizer!;
      const prompts = encodePrompts(ctx, examples);
      const responses = examples.map((e, i) => {
        if (e.answer === undefined) {
          throw new Error(
            `SFT needs an "answer" for every example (prompt ${JSON.stringify(e.prompt)})`,
          );
        }
        const r = [...tok.encode(e.answer), ...(ctx.eos.length ? [ctx.eos[0]] : [])];
        checkExampleFits(e, prompts[i], r.length, ctx.model.config.maxPositionEmbeddings);
        return r;
      });
      return Promise.resolve(scoredBatch(packSequences(prompts, responses, ctx.pad)));
    },
    positionLoss: ({ logits, targets }) => ({ loss: sftPositionLoss(logits, targets) }),
  };
}

/**
 * L = -sum_t mask_t log p(ids[t+1] | ids[<=t]) / sum(mask).
 * logits (B, T, V); ids and mask (B, T) row-major; mask_t = 1 where position t scores a response token.
 */
export function crossEntropyLoss(
  logits: Tensor,
  ids: ArrayLike<number>,
  mask: ArrayLike<number>,
  divisor?: number,
): Tensor {
  const [B, T] = logits.shape;
  const targets = new Int32Array(B * T);
  let count = 0;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      targets[b * T + t] = t + 1 < T ? ids[b * T + t + 1] : 0;
      count += mask[b * T + t];
    }
  }
  const target = Tensor.from(targets, [B, T], { dtype: "i32" });
  const m = Tensor.from(mask, [B, T]);
  return mulScalar(
    sum(mul(sftPositionLoss(logits, target), m)),
    1 / (divisor ?? Math.max(count, 1)),
  );
}
