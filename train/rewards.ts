/**
 * EM-RL rewards (EM_SPEC.md), computed with no gradient from what the
 * rollout's policy saw. To add one: an entry in REWARDS (its --help line,
 * what it needs, the function) and a test; flags, help and the data checks
 * follow from the entry.
 * @module
 */
import { answersMatch, extractAnswer, majorityVote, normalizeAnswer } from "../infer/answer.ts";

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
  /** KL(U || p_t) = -log|V| - mean_j log p_tj at each response token (when a reward needs it). */
  selfCertainty?: number[];
}

/** Mean (the public code) or sum (the paper) over a response's tokens. */
export type RewardReduce = "mean" | "sum";

export interface RewardSpec {
  /** One line for --help. */
  summary: string;
  /** Every prompt must carry an "answer" (the labeled baselines). */
  needsAnswer?: boolean;
  /** The rollouts must carry `selfCertainty` (one more no-grad pass over the logits). */
  needsSelfCertainty?: boolean;
  /** The reward of rollout `r`; `group` holds the N rollouts of its prompt (r included). */
  reward(r: Rollout, group: Rollout[], reduce: RewardReduce): number;
}

function reduceTokens(xs: number[], reduce: RewardReduce): number {
  if (xs.length === 0) return 0;
  const s = xs.reduce((a, b) => a + b, 0);
  return reduce === "mean" ? s / xs.length : s;
}

/** The answer of a response: the last \boxed{}, else the last number (plain answers). */
export function answerOf(text: string): string | null {
  return extractAnswer(text, "auto");
}

/** The rewards --reward offers. */
export type RewardName = "token" | "sequence" | "self-certainty" | "majority" | "correct";

export const REWARDS: Record<RewardName, RewardSpec> = {
  token: {
    summary: "EM-RL-token: -H per token, mean (code) or sum (paper) over the response",
    reward: (r, _g, reduce) => -reduceTokens(r.entropies, reduce),
  },
  sequence: {
    summary: "EM-RL-sequence: log-prob of the sampled tokens, mean or sum",
    reward: (r, _g, reduce) => reduceTokens(r.logProbs, reduce),
  },
  "self-certainty": {
    summary: "Intuitor's self-certainty: mean KL(U || p) over the response",
    needsSelfCertainty: true,
    reward: (r) => {
      if (!r.selfCertainty) {
        throw new Error("self-certainty: the rollout carries no KL(U||p) values");
      }
      return reduceTokens(r.selfCertainty, "mean");
    },
  },
  majority: {
    summary: "TTRL: 1 when the answer is the majority answer of the prompt's rollouts",
    reward: (r, group) => {
      const a = answerOf(r.text);
      return a !== null && a === majorityVote(group.map((x) => answerOf(x.text))) ? 1 : 0;
    },
  },
  correct: {
    summary: 'labeled: 1 when the answer equals the data\'s "answer" (the RLOO/GRPO baseline)',
    needsAnswer: true,
    reward: (r) => {
      if (r.gold === undefined) {
        throw new Error(
          `--reward correct needs an "answer" for every prompt; ${r.origin} has none`,
        );
      }
      return answersMatch(answerOf(r.text), normalizeAnswer(r.gold)) ? 1 : 0;
    },
  },
};

export const REWARD_NAMES = Object.keys(REWARDS) as RewardName[];
