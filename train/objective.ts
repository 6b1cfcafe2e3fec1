/**
 * What differs between training methods, behind one interface, so that the
 * trainer's loop never asks which method it runs (nanoGPT's train.py): a
 * Method makes its Objective (and owns what that needs, e.g. EM-RL's
 * reference model); the Objective says how a step's batch is made
 * (rollouts, labels, rewards, advantages, reference log-probs), the loss at
 * each scored position, and which of its metrics the progress line shows.
 * Shared batch-making helpers live here too.
 * @module
 */
import type { CausalLM } from "../engine/model/causal_lm.ts";
import type { Rng } from "../engine/random.ts";
import { mulScalar } from "../engine/ops/mod.ts";
import type { Tensor } from "../engine/tensor.ts";
import { leftPad } from "../infer/generate.ts";
import { localSampler, type Sampler } from "../infer/sampler.ts";
import { checkExampleFits, encodePrompt, type Example } from "./data.ts";

/** Sequences of a step: ids and mask (B, T) and the padded prompt length P. */
export interface Batch {
  ids: number[];
  mask: number[];
  rows: number;
  length: number;
  promptLength: number;
}

/** A step's sequences with what the loss reads at each scored position. */
export interface StepBatch extends Batch {
  /** Flat indices (row * length + t) of the scored positions, row-major. */
  positions: number[];
  /** The token each scored position predicts: ids[position + 1]. */
  targets: number[];
  /** Per scored position, what the objective needs (old/reference log-probs, advantages). */
  data: Record<string, number[]>;
  /** What making the batch measured (reward mean, response length, ...). */
  metrics: Record<string, number>;
  /** Tokens sampled by rollouts (0 when nothing was sampled). */
  sampledTokens: number;
  /**
   * The temperature T the responses were sampled at: losses, log-probs and
   * entropies are of softmax(z / T), the distribution sampled from (EM_SPEC.md).
   */
  temperature: number;
}

/** The per-position view the loss gets: one chunk of scored positions. */
export interface PositionInputs {
  /** (n, V) logits at the chunk's positions. */
  logits: Tensor;
  /** (n) i32 tokens the positions predict. */
  targets: Tensor;
  /** (n) per-position data of the objective (StepBatch.data). */
  data: Record<string, Tensor>;
}

/** A per-position loss and, for metrics, per-position statistics (no gradient needed). */
export interface PositionLoss {
  /** (n) loss at each position; the trainer sums and normalises. */
  loss: Tensor;
  /** (n) values whose sums are reported as `<name>` / positions (e.g. kl, clipped). */
  stats?: Record<string, Tensor>;
}

/** What an objective may use to make a batch. */
export interface BatchContext {
  model: CausalLM;
  rng: Rng;
  pad: number;
  eos: number[];
  chat: boolean;
  maxNewTokens: number;
  temperature: number;
  topP: number;
  /** Sequences per forward pass (for the objective's own no-grad passes). */
  microBatch: number;
  /** Where rollouts are sampled (default: the model in this process). */
  sampler?: Sampler;
}

/** What a training run optimises. */
export interface Objective {
  readonly name: string;
  /** "tokens": the loss is a mean over scored positions; "sequences": per-sequence sums, averaged. */
  readonly normalizer: "tokens" | "sequences";
  /** The step's batch for these prompts. */
  makeBatch(ctx: BatchContext, examples: Example[]): Promise<StepBatch>;
  /** The loss at each position of a chunk. */
  positionLoss(inputs: PositionInputs): PositionLoss;
  /** Optimizer updates of a step, each a list of rows (default: one update on every row). */
  updates?(batch: StepBatch): number[][];
  /** Its metrics the progress line shows (StepBatch.metrics or stats), as short name -> key. */
  readonly progress?: Record<string, string>;
  /** GPU bytes it holds beside the model, by category (e.g. referenceBytes). */
  memory?(): Record<string, number>;
  /** Releases what it holds (e.g. a reference model). */
  dispose?(): void;
}

/** What a method's objective is made from. */
export interface ObjectiveSetup<O> {
  /** The model being trained (with its LoRA adapters attached, if any). */
  model: CausalLM;
  options: O;
  /** Where the run's initial weights can be reloaded from, if anywhere (EM-RL's reference). */
  initialModelDir: string | null;
  /** The run continues from a checkpoint: the model no longer holds its initial weights. */
  resumed: boolean;
}

/** A training method, as --method names it (methods.ts lists them). */
export interface Method<O> {
  /** One line for --help. */
  summary: string;
  /** It samples responses from the model (--n-samples, --temperature and --top-p apply). */
  samples: boolean;
  /** Why every example must carry an "answer" under these options (a flag to name), or null. */
  answersNeeded(o: O): string | null;
  /** Why these options cannot work, checked before anything loads, or null. */
  problem?(o: O, batchSize: number): string | null;
  /** The run's objective, owning what it allocates. */
  objective(setup: ObjectiveSetup<O>): Promise<Objective>;
}

/**
 * The response mask of a (B, T) batch whose prompts are left-padded to a
 * common length P (columns [0, P)): position t scores token t+1, so it is 1 for
 * t in [P-1, T-2] where both t and t+1 are real tokens.
 */
export function responseMask(
  attentionMask: ArrayLike<number>,
  batch: number,
  seq: number,
  promptLength: number,
): number[] {
  const out = new Array(batch * seq).fill(0);
  for (let b = 0; b < batch; b++) {
    for (let t = Math.max(promptLength - 1, 0); t < seq - 1; t++) {
      if (attentionMask[b * seq + t] && attentionMask[b * seq + t + 1]) out[b * seq + t] = 1;
    }
  }
  return out;
}

/** Left-padded prompts (as generate pads them) followed by right-padded responses. */
export function packSequences(prompts: number[][], responses: number[][], pad: number): Batch {
  const left = leftPad(prompts, pad); // (B, P)
  const P = left.length;
  const R = Math.max(1, ...responses.map((r) => r.length));
  const ids: number[] = [];
  const mask: number[] = [];
  prompts.forEach((_, i) => {
    const r = responses[i];
    const padding = new Array(R - r.length).fill(pad);
    ids.push(...left.ids.slice(i * P, (i + 1) * P), ...r, ...padding);
    mask.push(...left.mask.slice(i * P, (i + 1) * P), ...r.map(() => 1), ...padding.map(() => 0));
  });
  return { ids, mask, rows: prompts.length, length: P + R, promptLength: P };
}

/** A batch scored at its response positions, with no per-position data yet. */
export function scoredBatch(batch: Batch): StepBatch {
  const scored = responseMask(batch.mask, batch.rows, batch.length, batch.promptLength);
  const positions: number[] = [];
  scored.forEach((s, i) => s && positions.push(i));
  return {
    ...batch,
    positions,
    targets: positions.map((i) => batch.ids[i + 1]),
    data: {},
    metrics: {},
    sampledTokens: 0,
    temperature: 1,
  };
}

/** The prompts' token ids, each checked against the model (vocabulary, context length). */
export function encodePrompts(ctx: BatchContext, examples: Example[]): number[][] {
  const tok = ctx.model.tokenizer;
  if (!tok) throw new Error("train: the model directory has no tokenizer.json");
  const vocab = ctx.model.config.vocabSize;
  return examples.map((e) => {
    const p = encodePrompt(tok, e.prompt, ctx.chat);
    checkExampleFits(e, p, 0, ctx.model.config.maxPositionEmbeddings);
    const bad = p.find((id) => id >= vocab);
    if (bad !== undefined) {
      throw new Error(
        `the tokenizer produced id ${bad} but the model's vocab_size is ${vocab}: model and data do not match`,
      );
    }
    return p;
  });
}

/** Logits of the distribution sampled at temperature T: z / T (z itself at T = 1). */
export function atTemperature(logits: Tensor, temperature: number): Tensor {
  return temperature === 1 ? logits : mulScalar(logits, 1 / temperature);
}

/**
 * `n` responses per prompt from the context's sampler (the model in this
 * process by default): the prompts repeated, the responses, and the
 * sampler's log-probs of the sampled tokens when it reports them.
 */
export async function rollouts(
  ctx: BatchContext,
  prompts: number[][],
  n: number,
): Promise<{ prompts: number[][]; responses: number[][]; logprobs?: number[][] }> {
  const repeated = prompts.flatMap((p) => Array.from({ length: n }, () => p));
  const r = await (ctx.sampler ?? localSampler(ctx.model))({
    prompts,
    n,
    maxNewTokens: ctx.maxNewTokens,
    temperature: ctx.temperature,
    topP: ctx.topP,
    seed: Math.floor(ctx.rng.next() * 2 ** 31),
    eosTokenIds: ctx.eos,
    padTokenId: ctx.pad,
  });
  return { prompts: repeated, responses: r.tokens, logprobs: r.logprobs };
}

/**
 * The sampler's log-probs at a batch's scored positions (row-major, as
 * batch.positions): position t of a row scores response token t - P + 1.
 */
export function rolloutLogprobsAt(batch: StepBatch, logprobs: number[][]): number[] {
  return batch.positions.map((p) => {
    const row = Math.floor(p / batch.length);
    return logprobs[row][(p % batch.length) - batch.promptLength + 1];
  });
}
