/**
 * Scoring a batch's sampled tokens with no gradient: each scored position's
 * log-prob of its target and entropy (and Intuitor's KL(U||p) when asked),
 * under softmax(z / T), the distribution the tokens were sampled from.
 * EM-RL's old and reference log-probs use it, and rollouts from servers are
 * compared with it (rolloutMismatch, truncatedImportanceWeights).
 * @module
 */
import type { CausalLM } from "../engine/model/causal_lm.ts";
import {
  addScalar,
  concat,
  entropy,
  logSoftmax,
  mean,
  neg,
  sum,
  tokenLogProb,
} from "../engine/ops/mod.ts";
import { keep, noGrad, tidy } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { atTemperature, type StepBatch } from "./objective.ts";

/** Per scored position, with no gradient: log-prob of the target, entropy, and optionally KL(U||p). */
export async function scorePositions(
  model: CausalLM,
  batch: StepBatch,
  microBatch: number,
  withSelfCertainty: boolean,
): Promise<{ logProbs: Float32Array; entropies: Float32Array; selfCertainty?: Float32Array }> {
  const T = batch.length;
  const parts: { lp: Tensor; h: Tensor; sc: Tensor | null }[] = [];
  let at = 0; // index into batch.positions
  for (let r0 = 0; r0 < batch.rows; r0 += microBatch) {
    const r1 = Math.min(batch.rows, r0 + microBatch);
    const local: number[] = [];
    const targets: number[] = [];
    while (at < batch.positions.length && batch.positions[at] < r1 * T) {
      local.push(batch.positions[at] - r0 * T);
      targets.push(batch.targets[at]);
      at++;
    }
    if (local.length === 0) continue;
    noGrad(() =>
      tidy(() => {
        const hidden = model.hidden(
          Tensor.from(batch.ids.slice(r0 * T, r1 * T), [r1 - r0, T], { dtype: "i32" }),
          { attentionMask: batch.mask.slice(r0 * T, r1 * T) },
        );
        return model.headAt(hidden, local, (raw, from, to) => {
          const logits = atTemperature(raw, batch.temperature); // softmax(z / T): what was sampled
          const t = Tensor.from(targets.slice(from, to), [to - from], { dtype: "i32" });
          const lp = keep(tokenLogProb(logits, t));
          const h = keep(entropy(logits));
          // KL(U || p) = -log|V| - mean_j log p_j
          const sc = withSelfCertainty
            ? keep(
              addScalar(neg(mean(logSoftmax(logits), { axis: -1 })), -Math.log(logits.shape[1])),
            )
            : null;
          parts.push({ lp, h, sc });
          return sum(lp);
        });
      })
    ).dispose();
  }
  const gather = async (xs: Tensor[]) => {
    if (xs.length === 0) return new Float32Array(0);
    const all = noGrad(() => (xs.length === 1 ? xs[0].view([xs[0].size]) : concat(xs, 0)));
    const out = new Float32Array(await all.toArray());
    all.dispose();
    xs.forEach((x) => x.dispose());
    return out;
  };
  const [logProbs, entropies, selfCertainty] = await Promise.all([
    gather(parts.map((p) => p.lp)),
    gather(parts.map((p) => p.h)),
    withSelfCertainty ? gather(parts.map((p) => p.sc!)) : Promise.resolve(undefined),
  ]);
  return { logProbs, entropies, selfCertainty };
}

/**
 * How far a sampler's log-probs of the sampled tokens are from the
 * trainer's, per position: the mean |log p_trainer - log p_rollout|, and
 * the k3 estimate of KL(rollout || trainer), mean of r - 1 - log r with
 * r = p_trainer / p_rollout (the tokens were drawn from the rollout's).
 */
export function rolloutMismatch(
  trainer: ArrayLike<number>,
  rollout: ArrayLike<number>,
): { mismatchAbsLogp: number; mismatchKl: number } {
  let abs = 0;
  let kl = 0;
  for (let i = 0; i < rollout.length; i++) {
    const d = trainer[i] - rollout[i];
    abs += Math.abs(d);
    kl += Math.expm1(d) - d;
  }
  const n = Math.max(rollout.length, 1);
  return { mismatchAbsLogp: abs / n, mismatchKl: kl / n };
}

/** Truncated importance sampling: min(p_trainer / p_rollout, cap) per position. */
export function truncatedImportanceWeights(
  trainer: ArrayLike<number>,
  rollout: ArrayLike<number>,
  cap: number,
): number[] {
  return Array.from(rollout, (lr, i) => Math.min(Math.exp(trainer[i] - lr), cap));
}
