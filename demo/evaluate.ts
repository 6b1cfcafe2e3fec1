/**
 * Evaluation on held-out demo problems: accuracy with greedy decoding,
 * accuracy with sampling at temperature 1, and the mean token entropy of the
 * model's next-token distributions along the greedy answers.
 * @module
 */
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { generate, type GenerateOptions } from "../infer/generate.ts";
import { decodeDemo, DEMO_EOS, DEMO_MAX_NEW_TOKENS, encodeDemo, type Problem } from "./task.ts";

export interface DemoScores {
  greedyAccuracy: number;
  sampleAccuracy: number;
  entropy: number;
}

/** Accuracy of one decoding setting; with entropies, their mean over generated tokens. */
export async function accuracy(
  model: CausalLM,
  problems: Problem[],
  options: GenerateOptions,
  batch = 500,
): Promise<{ accuracy: number; entropy: number }> {
  let correct = 0;
  let hSum = 0;
  let hCount = 0;
  for (let i = 0; i < problems.length; i += batch) {
    const part = problems.slice(i, i + batch);
    const r = await generate(model, part.map((p) => encodeDemo(p.prompt)), {
      maxNewTokens: DEMO_MAX_NEW_TOKENS,
      eosTokenIds: [DEMO_EOS],
      padTokenId: DEMO_EOS,
      ...options,
      seed: (options.seed ?? 0) + i,
    });
    r.tokens.forEach((t, b) => {
      if (t.at(-1) === DEMO_EOS && decodeDemo(t) === part[b].answer) correct++;
    });
    r.entropies?.forEach((row) => row.forEach((h) => (hSum += h, hCount++)));
  }
  return { accuracy: correct / problems.length, entropy: hCount ? hSum / hCount : NaN };
}

/** Greedy accuracy, sampled (T=1) accuracy and mean greedy-path entropy. */
export async function evaluateDemo(
  model: CausalLM,
  problems: Problem[],
  seed = 0,
): Promise<DemoScores> {
  const greedy = await accuracy(model, problems, { greedy: true, returnEntropies: true });
  const sampled = await accuracy(model, problems, { temperature: 1, seed });
  return {
    greedyAccuracy: greedy.accuracy,
    sampleAccuracy: sampled.accuracy,
    entropy: greedy.entropy,
  };
}
