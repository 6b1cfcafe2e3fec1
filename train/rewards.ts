/**
 * EM-RL rewards (EM_SPEC.md): one function each, computed with no gradient
 * from what the rollout's policy saw. To add one, write a `Reward` and list it
 * in REWARDS.
 * @module
 */
import { answersMatch, extractAnswer, normalizeAnswer } from "../infer/answer.ts";

/** What a reward sees of one rollout (per-token values over its response tokens). */
export interface Rollout {
  /** The response text (special tokens skipped). */
  text: string;
  /** The gold answer of the prompt, when the data has one. */
  gold?: string;
  /** Where the prompt came from (FILE:LINE) or the prompt itself, for errors. */
  origin: string;
  /** H(p_t) of the policy at each response token. */
  entropies: number[];
  /** log pi(y_t | y_<t) of each sampled token. */
  logProbs: number[];
  /** KL(U || p_t) = -log|V| - mean_j log p_tj at each response token (self-certainty only). */
  selfCertainty?: number[];
}

/** Mean (the public code) or sum (the paper) over a response's tokens. */
export type RewardReduce = "mean" | "sum";

/** A rollout's reward; `group` holds the N rollouts of its prompt (itself included). */
export type Reward = (r: Rollout, group: Rollout[], reduce: RewardReduce) => number;

function reduceTokens(xs: number[], reduce: RewardReduce): number {
  if (xs.length === 0) return 0;
  const s = xs.reduce((a, b) => a + b, 0);
  return reduce === "mean" ? s / xs.length : s;
}

/** The answer of a response: the last \boxed{}, else the last number (plain answers). */
export function answerOf(text: string): string | null {
  return extractAnswer(text, "auto");
}

/** The most frequent answer of a group (the first seen on ties), or null when none has one. */
export function majorityAnswer(texts: string[]): string | null {
  const counts = new Map<string, number>();
  let best: string | null = null;
  for (const t of texts) {
    const a = answerOf(t);
    if (a === null) continue;
    const n = (counts.get(a) ?? 0) + 1;
    counts.set(a, n);
    if (best === null || n > counts.get(best)!) best = a;
  }
  return best;
}

/** The rewards --reward offers. */
export type RewardName = "token" | "sequence" | "self-certainty" | "majority" | "correct";

export const REWARDS: Record<RewardName, Reward> = {
  /** EM-RL-token: -mean_t H(p_t) (code) or -sum_t (paper). */
  token: (r, _g, reduce) => -reduceTokens(r.entropies, reduce),
  /** EM-RL-sequence: mean_t log pi(y_t) (code) or the sum (paper). */
  sequence: (r, _g, reduce) => reduceTokens(r.logProbs, reduce),
  /** Intuitor's self-certainty: mean_t KL(U || p_t). */
  "self-certainty": (r) => {
    if (!r.selfCertainty) throw new Error("self-certainty: the rollout carries no KL(U||p) values");
    return reduceTokens(r.selfCertainty, "mean");
  },
  /** TTRL / SC-RL: 1 when the answer equals the majority answer of the prompt's rollouts. */
  majority: (r, group) => {
    const a = answerOf(r.text);
    const m = majorityAnswer(group.map((x) => x.text));
    return a !== null && a === m ? 1 : 0;
  },
  /** Labeled correctness (the RLOO/GRPO baselines): 1 when the answer equals the gold one. */
  correct: (r) => {
    if (r.gold === undefined) {
      throw new Error(
        `--reward correct needs an "answer" for every prompt; ${r.origin} has none`,
      );
    }
    return answersMatch(answerOf(r.text), normalizeAnswer(r.gold)) ? 1 : 0;
  },
};

export const REWARD_NAMES: RewardName[] = Object.keys(REWARDS) as RewardName[];
