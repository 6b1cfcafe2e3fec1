/**
 * A training run's options with their defaults (nanoGPT-style: one typed
 * object, defaults up top), composed of what every run has and each
 * method's own options, and the learning-rate schedule they define.
 * @module
 */
import type { LoraTarget } from "../engine/model/lora.ts";
import { EM_RL_DEFAULTS, type EmRlOptions } from "./em_rl.ts";
import type { EmFtOptions } from "./em_ft.ts";
import type { MethodName } from "./methods.ts";

export type Schedule = "constant" | "cosine";

export interface TrainOptions extends EmFtOptions, EmRlOptions {
  method: MethodName;
  steps: number;
  /** Prompts per optimizer step. */
  batchSize: number;
  /** Sequences per forward/backward; gradients accumulate across them. */
  microBatch: number;
  lr: number;
  warmup: number;
  schedule: Schedule;
  weightDecay: number;
  clip: number;
  maxNewTokens: number;
  temperature: number;
  topP: number;
  seed: number;
  evalEvery: number;
  saveEvery: number;
  /** Activation recomputation: keep only each layer's input, recompute the layer in backward. */
  recompute: boolean;
  /** LoRA (CLI): rank (0 = full fine-tuning), alpha, target layers. */
  loraRank: number;
  loraAlpha: number;
  loraTargets: LoraTarget[];
  /** Stop when an evaluation's score falls below this fraction of the best so far (0 = off). */
  stopOnCollapse: number;
  chat: boolean;
  outDir: string;
  /**
   * With rollouts from servers: EM-RL's policy-gradient term at each token is
   * weighted by min(pi_trainer / pi_rollout, tisCap) (truncated importance
   * sampling; 0 = off).
   */
  tisCap: number;
  /** With rollouts from servers: step k+1's are sampled while step k updates (one step off-policy). */
  asyncRollouts: boolean;
  /** Quantize the frozen base's linear layers at load (LoRA only; engine/quant), or null. */
  quantize: "int4" | "int8" | null;
}

export const DEFAULTS: TrainOptions = {
  ...EM_RL_DEFAULTS,
  method: "em-ft",
  steps: 50,
  batchSize: 32,
  nSamples: 4,
  reduce: "mean",
  microBatch: 64,
  lr: 1e-4,
  warmup: 0,
  schedule: "constant",
  weightDecay: 0,
  clip: 1.0,
  maxNewTokens: 64,
  temperature: 1.0,
  topP: 1.0,
  seed: 0,
  evalEvery: 0,
  saveEvery: 0,
  recompute: false,
  loraRank: 0,
  loraAlpha: 0,
  loraTargets: ["q", "k", "v", "o", "gate", "up", "down"],
  stopOnCollapse: 0,
  chat: false,
  outDir: "runs/em-ft",
  tisCap: 0,
  asyncRollouts: false,
  quantize: null,
};

/** Learning rate at `step` (1-based): linear warm-up, then constant or cosine to zero. */
export function learningRate(
  o: Pick<TrainOptions, "lr" | "warmup" | "schedule" | "steps">,
  step: number,
): number {
  if (o.warmup > 0 && step <= o.warmup) return (o.lr * step) / o.warmup;
  if (o.schedule === "constant") return o.lr;
  const t = (step - o.warmup) / Math.max(1, o.steps - o.warmup);
  return 0.5 * o.lr * (1 + Math.cos(Math.PI * Math.min(1, t)));
}
