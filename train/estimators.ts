/**
 * EM-RL's advantage estimators (EM_SPEC.md): each maps the rewards of a
 * batch, laid out as groups of `n` rollouts per prompt, to advantages. To add
 * one: an entry in ESTIMATORS (its --help line and the rollouts its baseline
 * needs) and a test; flags, help and checks follow from the entry.
 * @module
 */

export interface EstimatorSpec {
  /** One line for --help. */
  summary: string;
  /** Fewest rollouts per prompt for the baseline to carry information. */
  minPerPrompt: number;
  /** Fewest rollouts in a batch for the baseline to carry information. */
  minPerBatch: number;
  /** Advantages of `rewards` (groups of n per prompt), in the same order. */
  advantages(rewards: number[], n: number): number[];
}

const meanOf = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** The groups of n consecutive rewards, each beside the rewards it is compared with. */
function byGroup(rewards: number[], n: number, f: (r: number, group: number[]) => number) {
  return rewards.map((r, i) => f(r, rewards.slice(i - (i % n), i - (i % n) + n)));
}

/** The estimators --estimator offers. */
export type Estimator = "rloo" | "grpo" | "reinforce";

export const ESTIMATORS: Record<Estimator, EstimatorSpec> = {
  rloo: {
    summary: "reward minus the mean of the prompt's other rollouts (leave-one-out)",
    minPerPrompt: 2,
    minPerBatch: 2,
    advantages: (rewards, n) =>
      byGroup(rewards, n, (r, g) => r - (g.reduce((a, b) => a + b, 0) - r) / (n - 1)),
  },
  grpo: {
    summary: "reward standardised within the prompt's rollouts (unbiased std, as torch.std)",
    minPerPrompt: 2,
    minPerBatch: 2,
    advantages: (rewards, n) =>
      byGroup(rewards, n, (r, g) => {
        const m = meanOf(g);
        const std = Math.sqrt(g.reduce((a, x) => a + (x - m) ** 2, 0) / (n - 1));
        return (r - m) / (std + 1e-6);
      }),
  },
  reinforce: {
    summary: "reward minus the batch mean",
    minPerPrompt: 1,
    minPerBatch: 2,
    advantages: (rewards) => rewards.map((r) => r - meanOf(rewards)),
  },
};
export const ESTIMATOR_NAMES = Object.keys(ESTIMATORS) as Estimator[];

/**
 * Why `estimator` cannot work with `n` rollouts per prompt and `total` in a
 * batch (its advantages would all be zero: no gradient), or null.
 */
export function estimatorProblem(estimator: Estimator, n: number, total: number): string | null {
  const e = ESTIMATORS[estimator];
  if (n < e.minPerPrompt) {
    return `--estimator ${estimator} needs --n-samples >= ${e.minPerPrompt} (it compares each rollout with the others of its prompt; with ${n} every advantage is 0)`;
  }
  if (total < e.minPerBatch) {
    return `--estimator ${estimator} needs at least ${e.minPerBatch} rollouts per batch (--batch-size x --n-samples is ${total}; with one every advantage is 0)`;
  }
  return null;
}

/** Advantages of rewards laid out as groups of `n` rollouts per prompt. */
export function advantages(rewards: number[], n: number, estimator: Estimator): number[] {
  if (rewards.length % n !== 0) {
    throw new Error(`advantages: ${rewards.length} rewards, groups of ${n}`);
  }
  const problem = estimatorProblem(estimator, n, rewards.length);
  if (problem) throw new Error(problem);
  return ESTIMATORS[estimator].advantages(rewards, n);
}
