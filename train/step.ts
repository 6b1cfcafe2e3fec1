/**
 * The pieces of one training step the loop strings together: the batch
 * (made now, or ahead while the previous update runs), its rollouts'
 * mismatch with the trainer, and the optimizer updates on it.
 * @module
 */
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { type AdamW, clipGradNorm } from "../engine/optim.ts";
import type { Rng } from "../engine/random.ts";
import type { Tensor } from "../engine/tensor.ts";
import { NonFiniteLogitsError } from "../infer/generate.ts";
import type { Sampler } from "../infer/sampler.ts";
import { accumulateGradients } from "./accumulate.ts";
import type { ExampleSource } from "./data.ts";
import type { BatchContext, Objective, StepBatch } from "./objective.ts";
import type { TrainOptions } from "./options.ts";
import { rolloutMismatch, scorePositions, truncatedImportanceWeights } from "./scoring.ts";

/** Thrown when the loss or gradient stops being finite; the last good checkpoint is kept. */
export class DivergedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DivergedError";
  }
}

/** A batch being made ahead of its step (asyncRollouts). */
export interface Prefetched {
  batch: Promise<StepBatch>;
  /** Lets it go past its sampling (scoring uses the weights, so after the update). */
  release(): void;
  abort(): void;
}

/**
 * Starts making a batch now with the sampler's requests sent at once, but
 * holds what follows the sampling (the objective's scoring passes) until
 * release(): the rollouts come from the weights the servers have now (one
 * step behind), the scoring from the weights after this step's update.
 */
export function prefetch(
  ctx: BatchContext,
  make: (ctx: BatchContext) => Promise<StepBatch>,
): Prefetched {
  const released = Promise.withResolvers<void>();
  const controller = new AbortController();
  const sampler = ctx.sampler!;
  const batch = make({
    ...ctx,
    sampler: async (r) => {
      const out = sampler({ ...r, signal: controller.signal });
      out.catch(() => {}); // rejections are seen when awaited below
      await released.promise;
      return await out;
    },
  });
  batch.catch(() => {}); // seen when the next step awaits it
  return {
    batch,
    release: () => released.resolve(),
    abort: () => controller.abort(new Error("the run stopped")),
  };
}

/**
 * Rollouts from a sampler that reports log-probs: their mismatch with the
 * trainer's log-probs of the same tokens (EM-RL's old log-probs, else one
 * no-grad pass) joins the step's metrics; with tisCap, each position's
 * truncated importance weight joins its data.
 */
export async function compareRollouts(
  model: CausalLM,
  batch: StepBatch,
  o: TrainOptions,
): Promise<void> {
  const rollout = batch.data.rolloutLogp;
  if (!rollout) return;
  delete batch.data.rolloutLogp;
  const trainer = batch.data.old ??
    (await scorePositions(model, batch, o.microBatch, false)).logProbs;
  Object.assign(batch.metrics, rolloutMismatch(trainer, rollout));
  if (o.tisCap > 0) {
    const w = truncatedImportanceWeights(trainer, rollout, o.tisCap);
    batch.data.tisWeight = w;
    batch.metrics.tisCapped = w.filter((x) => x >= o.tisCap).length / Math.max(w.length, 1);
  }
}

/** What an objective may use to make a step's batch. */
export function batchContext(
  model: CausalLM,
  o: TrainOptions,
  rng: Rng,
  sampler: Sampler | undefined,
): BatchContext {
  const eos = model.generation.eosTokenIds;
  return {
    model,
    rng,
    pad: model.generation.padTokenId ?? eos[0] ?? 0,
    eos,
    chat: o.chat,
    maxNewTokens: o.maxNewTokens,
    temperature: o.temperature,
    topP: o.topP,
    microBatch: o.microBatch,
    sampler,
  };
}

/** The step's batch; NaN logits while sampling stop the run before it updates. */
export async function makeBatch(
  objective: Objective,
  ctx: BatchContext,
  source: ExampleSource,
  o: TrainOptions,
  at: { step: number; lastGood: string },
): Promise<StepBatch> {
  try {
    return await objective.makeBatch(ctx, source.next(o.batchSize));
  } catch (e) {
    if (!(e instanceof NonFiniteLogitsError)) throw e;
    throw new DivergedError(
      `step ${at.step}: the model's logits are NaN or Inf while sampling (${e.message}); ` +
        `stopped before updating. ${at.lastGood}`,
    );
  }
}

/**
 * The objective's optimizer updates on a batch: for each, gradients
 * accumulated over micro-batches, clipped, then AdamW. Returns the means
 * over updates of the loss and gradient norm, and per scored position of the
 * entropy and the objective's statistics.
 */
export async function update(
  model: CausalLM,
  batch: StepBatch,
  objective: Objective,
  opt: AdamW,
  o: TrainOptions & { lr: number; step: number; lastGood: string },
): Promise<{
  loss: number;
  gradNorm: number;
  entropy: number;
  stats: Record<string, number>;
  trainedTokens: number;
}> {
  const updates = objective.updates?.(batch) ??
    [Array.from({ length: batch.rows }, (_, i) => i)];
  let lossSum = 0;
  let gradNormSum = 0;
  let positions = 0;
  let trainedTokens = 0;
  const statSums: Record<string, number> = {};
  for (const rows of updates) {
    opt.lr = o.lr;
    opt.zeroGrad();
    const acc = accumulateGradients(model, batch, objective, o.microBatch, rows, o.recompute);
    if (acc.count === 0) {
      throw new Error(
        `step ${o.step}: no response tokens to train on (max-new-tokens too small?)`,
      );
    }
    const norm = clipGradNorm(opt.params, o.clip);
    const names = Object.keys(acc.stats);
    const [gradNorm, loss, ...sums] = await Promise.all([
      norm.item(),
      acc.loss.item(),
      ...names.map((k) => acc.stats[k].item()),
    ]);
    [norm, acc.loss, ...Object.values(acc.stats)].forEach((t) => t.dispose());
    if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
      opt.zeroGrad();
      throw new DivergedError(
        `step ${o.step}: the ${Number.isFinite(loss) ? "gradient norm" : "loss"} is ${
          Number.isFinite(loss) ? gradNorm : loss
        }; stopped before updating. ${o.lastGood}`,
      );
    }
    opt.update();
    opt.zeroGrad();
    lossSum += loss;
    gradNormSum += gradNorm;
    positions += acc.count;
    names.forEach((k, i) => statSums[k] = (statSums[k] ?? 0) + sums[i]);
    trainedTokens += rows.reduce(
      (t, r) => t + sumOf(batch.mask, r * batch.length, batch.length),
      0,
    );
  }
  const { entropy: hSum, ...stats } = statSums;
  return {
    loss: lossSum / updates.length,
    gradNorm: gradNormSum / updates.length,
    entropy: hSum / positions,
    stats: Object.fromEntries(Object.entries(stats).map(([k, v]) => [k, v / positions])),
    trainedTokens,
  };
}

export function bytesOf(ts: Tensor[]): number {
  return ts.reduce((n, t) => n + t.buffer.size, 0);
}

export function sumOf(xs: number[], from: number, n: number): number {
  let s = 0;
  for (let i = from; i < from + n; i++) s += xs[i];
  return s;
}
