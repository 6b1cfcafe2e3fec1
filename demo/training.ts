/**
 * The embedded demo of `deno task train`: its settings, the validation
 * evaluation that drives --eval-every on it, and the before/after table.
 * @module
 */
import type { CausalLM } from "../engine/model/causal_lm.ts";
import type { TrainOptions } from "../train/options.ts";
import { accuracy, type DemoScores } from "./evaluate.ts";
import type { Sampler } from "../infer/sampler.ts";
import {
  decodeDemo,
  DEMO_EOS,
  DEMO_HELD_OUT,
  DEMO_MAX_NEW_TOKENS,
  encodeDemo,
  heldOutProblems,
  type Problem,
} from "./task.ts";

/** Settings of the no-argument demo (see README: chosen to finish in minutes on 2 CPU cores). */
export const DEMO_DEFAULTS: Partial<TrainOptions> = {
  method: "em-ft",
  steps: 50,
  batchSize: 64,
  nSamples: 4,
  microBatch: 256,
  lr: 3e-5,
  maxNewTokens: DEMO_MAX_NEW_TOKENS,
  temperature: 1,
  topP: 1,
  weightDecay: 0,
  clip: 1,
};

/** Steps of each method on the demo (EM-RL's take about the EM-FT demo's wall time). */
export const DEMO_STEPS: Partial<Record<TrainOptions["method"], number>> = { "em-rl": 30 };

/**
 * The demo's evaluation during training: greedy accuracy on 200 validation
 * problems (held out from training), its entropy, and `stop` once accuracy
 * reaches `target`.
 */
export function demoValidation(
  target: number | null,
  sampler?: Sampler,
): (model: CausalLM) => Promise<Record<string, number>> {
  const validation = heldOutProblems(DEMO_HELD_OUT).slice(0, 200);
  return async (model) => {
    // decoded elsewhere (rollout servers): accuracy only
    const g = sampler
      ? { accuracy: await samplerAccuracy(sampler, validation), entropy: undefined }
      : await accuracy(model, validation, { greedy: true, returnEntropies: true });
    const out: Record<string, number> = {
      greedyAccuracy: g.accuracy,
      ...(g.entropy === undefined ? {} : { entropy: g.entropy }),
      score: g.accuracy,
    };
    if (target !== null && g.accuracy >= target) out.stop = 1;
    return out;
  };
}

/** Greedy accuracy on demo problems decoded by a sampler. */
async function samplerAccuracy(sampler: Sampler, problems: Problem[]): Promise<number> {
  const r = await sampler({
    prompts: problems.map((p) => encodeDemo(p.prompt)),
    n: 1,
    greedy: true,
    maxNewTokens: DEMO_MAX_NEW_TOKENS,
    temperature: 1,
    topP: 1,
    seed: 0,
    eosTokenIds: [DEMO_EOS],
    padTokenId: DEMO_EOS,
  });
  return r.tokens.filter((t, i) => t.at(-1) === DEMO_EOS && decodeDemo(t) === problems[i].answer)
    .length / problems.length;
}

/** The before/after table the demo prints. */
export function demoTable(before: DemoScores, after: DemoScores): string {
  const row = (name: string, a: number, b: number, pct = true) =>
    `| ${name.padEnd(30)} | ${(pct ? (100 * a).toFixed(1) + "%" : a.toFixed(3)).padStart(7)} | ${
      (pct ? (100 * b).toFixed(1) + "%" : b.toFixed(3)).padStart(7)
    } |`;
  return [
    `| ${("held-out problems: " + DEMO_HELD_OUT).padEnd(30)} | before  | after   |`,
    "| ------------------------------ | ------- | ------- |",
    row("accuracy, greedy", before.greedyAccuracy, after.greedyAccuracy),
    row("accuracy, sampling T=1", before.sampleAccuracy, after.sampleAccuracy),
    row("mean token entropy (nats)", before.entropy, after.entropy, false),
  ].join("\n");
}
