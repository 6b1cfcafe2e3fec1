/**
 * SFT: cross-entropy of the response tokens given the prompt (prompt and
 * padding masked), the paper's supervised baseline and how the demo model is made.
 * @module
 */
import { neg, tokenLogProb } from "../engine/ops/mod.ts";
import type { Tensor } from "../engine/tensor.ts";
import { checkExampleFits } from "./data.ts";
import {
  encodePrompts,
  type Method,
  type Objective,
  packSequences,
  scoredBatch,
} from "./objective.ts";

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

export const sft: Method<unknown> = {
  summary: "cross-entropy on labeled prompt/answer pairs (prompt masked)",
  samples: false,
  answersNeeded: () => "--method sft",
  objective: () => Promise.resolve(sftObjective()),
};
