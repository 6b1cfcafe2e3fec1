/**
 * EM-RL (EM_SPEC.md): policy gradient whose reward is the model's own
 * certainty (or, for the labeled baselines, correctness). Each step: N
 * rollouts per prompt; the policy's and the frozen reference's log-probs of
 * the sampled tokens, with no gradient; a reward per rollout (rewards.ts);
 * advantages by RLOO, GRPO or REINFORCE, broadcast to the rollout's tokens;
 * then PPO's clipped objective with a k3 KL to the reference, token-mean.
 * @module
 */
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { loadModel } from "../engine/model/checkpoint.ts";
import { frozenCopy } from "../engine/model/init.ts";
import {
  abs,
  add,
  addScalar,
  elementwise,
  exp,
  maximum,
  maxScalar,
  minScalar,
  mul,
  mulScalar,
  neg,
  sub,
  tokenLogProb,
} from "../engine/ops/mod.ts";
import { noGrad } from "../engine/scope.ts";
import type { Tensor } from "../engine/tensor.ts";
import { advantages, type Estimator, estimatorProblem } from "./estimators.ts";
import { scorePositions } from "./scoring.ts";
import {
  type BatchContext,
  encodePrompts,
  type Method,
  type Objective,
  packSequences,
  rolloutLogprobsAt,
  rollouts,
  scoredBatch,
} from "./objective.ts";
import { type RewardName, type RewardReduce, REWARDS, type Rollout } from "./rewards.ts";

export interface EmRlOptions {
  /** Rollouts per prompt (N). */
  nSamples: number;
  reward: RewardName;
  rewardReduce: RewardReduce;
  estimator: Estimator;
  /** PPO's epsilon: the ratio is clipped to [1 - eps, 1 + eps]. */
  clipRatio: number;
  /** Passes over each batch of rollouts. */
  ppoEpochs: number;
  /** Prompts per optimizer update (their N rollouts each); 0 = the whole batch. */
  ppoMiniBatch: number;
  /** Weight of the k3 KL to the reference; 0 allocates no reference. */
  klCoef: number;
}

/** EM-RL's defaults: the public code's (token reward, RLOO, 4 rollouts, clip 0.2, k3 0.001). */
export const EM_RL_DEFAULTS: EmRlOptions = {
  nSamples: 4,
  reward: "token",
  rewardReduce: "mean",
  estimator: "rloo",
  clipRatio: 0.2,
  ppoEpochs: 1,
  ppoMiniBatch: 0,
  klCoef: 0.001,
};

/**
 * PPO's clipped objective per token: -min(ratio A, clip(ratio, 1-eps, 1+eps) A)
 * with ratio = exp(logp - old). Also (no gradient) 1 where the clipped term
 * is the one in force (strictly larger loss: TRL's and verl's pg_clipfrac),
 * for the clip fraction. All (n).
 */
export function ppoClipLoss(
  logp: Tensor,
  old: Tensor,
  adv: Tensor,
  clipRatio: number,
): { loss: Tensor; clipped: Tensor; ratio: Tensor } {
  const ratio = exp(sub(logp, old));
  const unclipped = neg(mul(ratio, adv));
  const clipped = neg(mul(minScalar(maxScalar(ratio, 1 - clipRatio), 1 + clipRatio), adv));
  const loss = maximum(unclipped, clipped); // ties go to the unclipped (ratio) path
  // a = clipped, b = unclipped: 1 where the clipped term is the larger loss, the one in force
  const active = noGrad(() => elementwise("gt", [clipped, unclipped], "select(0.0, 1.0, a > b)"));
  return { loss, clipped: active, ratio };
}

/** k3 ("low_var_kl") estimate of KL(pi || ref) per token: e^(ref-logp) - (ref-logp) - 1, clamped to [-10, 10]. */
export function klK3(logp: Tensor, ref: Tensor): Tensor {
  const d = sub(ref, logp);
  return minScalar(maxScalar(addScalar(sub(exp(d), d), -1), -10), 10);
}

/**
 * CPU reference (float64): the PPO-clip loss at one token, its derivative in
 * logp, and whether the clipped term is in force (1) or not (0).
 */
export function ppoClipReference(
  logp: number,
  old: number,
  adv: number,
  clipRatio: number,
): { loss: number; dLogp: number; clipped: number } {
  const ratio = Math.exp(logp - old);
  const c = Math.min(Math.max(ratio, 1 - clipRatio), 1 + clipRatio);
  const u = -ratio * adv;
  const k = -c * adv;
  if (u >= k) return { loss: u, dLogp: -ratio * adv, clipped: 0 };
  // the clipped branch: constant in logp outside [1-eps, 1+eps]
  const inside = ratio > 1 - clipRatio && ratio < 1 + clipRatio;
  return { loss: k, dLogp: inside ? -ratio * adv : 0, clipped: 1 };
}

/** CPU reference (float64): k3 and its derivative in logp. */
export function klK3Reference(logp: number, ref: number): { kl: number; dLogp: number } {
  const d = ref - logp;
  const raw = Math.exp(d) - d - 1;
  const kl = Math.min(Math.max(raw, -10), 10);
  return { kl, dLogp: raw > -10 && raw < 10 ? -Math.exp(d) + 1 : 0 };
}

/** The EM-RL objective; `reference` is the frozen initial model (null when klCoef is 0). */
export function emRlObjective(o: EmRlOptions, reference: CausalLM | null): Objective {
  if (o.klCoef > 0 && !reference) throw new Error("EM-RL: klCoef > 0 needs a reference model");
  const reward = REWARDS[o.reward];
  return {
    name: "em-rl",
    normalizer: "tokens",
    progress: { reward: "reward", kl: "kl", clip: "clipFraction", len: "responseLength" },
    async makeBatch(ctx: BatchContext, examples) {
      const r = await rollouts(ctx, encodePrompts(ctx, examples), o.nSamples);
      const batch = scoredBatch(packSequences(r.prompts, r.responses, ctx.pad));
      batch.sampledTokens = r.responses.reduce((s, x) => s + x.length, 0);
      batch.temperature = ctx.temperature;
      if (r.logprobs) batch.data.rolloutLogp = rolloutLogprobsAt(batch, r.logprobs);
      const policy = await scorePositions(
        ctx.model,
        batch,
        ctx.microBatch,
        reward.needsSelfCertainty === true,
      );
      const ref = reference ? await scorePositions(reference, batch, ctx.microBatch, false) : null;
      // the scored positions of each rollout (row-major, so contiguous)
      const rowOf = batch.positions.map((p) => Math.floor(p / batch.length));
      const tok = ctx.model.tokenizer!;
      const rolls: Rollout[] = r.responses.map((resp, row) => {
        const idx: number[] = [];
        rowOf.forEach((x, i) => x === row && idx.push(i));
        const e = examples[Math.floor(row / o.nSamples)];
        return {
          text: tok.decode(resp, { skipSpecialTokens: true }),
          gold: e.answer,
          origin: e.origin ?? JSON.stringify(e.prompt),
          entropies: idx.map((i) => policy.entropies[i]),
          logProbs: idx.map((i) => policy.logProbs[i]),
          selfCertainty: policy.selfCertainty
            ? idx.map((i) => policy.selfCertainty![i])
            : undefined,
        };
      });
      const rewards = rolls.map((x, i) => {
        const g0 = i - (i % o.nSamples);
        return reward.reward(x, rolls.slice(g0, g0 + o.nSamples), o.rewardReduce);
      });
      const adv = advantages(rewards, o.nSamples, o.estimator);
      batch.data = {
        ...batch.data,
        old: Array.from(policy.logProbs),
        adv: rowOf.map((row) => adv[row]),
        ...(ref ? { ref: Array.from(ref.logProbs) } : {}),
      };
      const meanOf = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
      const std = (xs: number[]) => Math.sqrt(meanOf(xs.map((x) => (x - meanOf(xs)) ** 2)));
      batch.metrics = {
        reward: meanOf(rewards),
        rewardStd: std(rewards),
        advantageStd: std(adv),
        responseLength: meanOf(r.responses.map((x) => x.length)),
      };
      return batch;
    },
    positionLoss({ logits, targets, data }) {
      const logp = tokenLogProb(logits, targets);
      const pg = ppoClipLoss(logp, data.old, data.adv, o.clipRatio);
      const stats: Record<string, Tensor> = {
        clipFraction: pg.clipped,
        ratioDeviation: noGrad(() => abs(addScalar(pg.ratio, -1))),
      };
      // rollouts from servers: truncated importance weights min(pi_old / pi_rollout, C) (trainer.ts)
      const policyLoss = data.tisWeight ? mul(pg.loss, data.tisWeight) : pg.loss;
      if (o.klCoef === 0 || !data.ref) return { loss: policyLoss, stats };
      const kl = klK3(logp, data.ref);
      stats.kl = noGrad(() => kl.view(kl.shape));
      return { loss: add(policyLoss, mulScalar(kl, o.klCoef)), stats };
    },
    updates(batch) {
      const rows = Array.from({ length: batch.rows }, (_, i) => i);
      const per = o.ppoMiniBatch > 0 ? o.ppoMiniBatch * o.nSamples : batch.rows;
      const groups: number[][] = [];
      for (let e = 0; e < o.ppoEpochs; e++) {
        for (let i = 0; i < rows.length; i += per) groups.push(rows.slice(i, i + per));
      }
      return groups;
    },
  };
}

/**
 * EM-RL as a method: its objective owns the reference, the initial weights
 * frozen. With LoRA that is the base itself (the same buffers, adapters off);
 * otherwise a copy, or on resume the initial checkpoint reloaded.
 */
export const emRl: Method<EmRlOptions> = {
  summary: "policy gradient (PPO clip, k3 KL to the initial model) rewarded by --reward",
  samples: true,
  answersNeeded: (o) => REWARDS[o.reward].needsAnswer ? `--reward ${o.reward}` : null,
  problem: (o, batchSize) => {
    if (o.ppoMiniBatch > 0 && batchSize % o.ppoMiniBatch !== 0) {
      return `--ppo-mini-batch ${o.ppoMiniBatch} does not divide --batch-size ${batchSize}: every PPO update must hold the same number of prompts`;
    }
    return estimatorProblem(o.estimator, o.nSamples, batchSize * o.nSamples);
  },
  async objective({ model, options: o, initialModelDir, resumed }) {
    let reference: CausalLM | null = null;
    let owned = false;
    if (o.klCoef > 0 && model.adapters) reference = model.base();
    else if (o.klCoef > 0 && !resumed) [reference, owned] = [frozenCopy(model), true];
    else if (o.klCoef > 0) {
      if (!initialModelDir) {
        throw new Error(
          "EM-RL: the initial model's directory is not recorded, so the KL reference cannot be reloaded to resume",
        );
      }
      reference = await loadModel(initialModelDir, { dtype: "f32", checkFinite: false });
      owned = true;
    }
    const bytes = owned ? reference!.tensors().reduce((n, t) => n + t.buffer.size, 0) : 0;
    return {
      ...emRlObjective(o, reference),
      memory: () => ({ referenceBytes: bytes }),
      dispose: () => owned && reference!.dispose(),
    };
  },
};
