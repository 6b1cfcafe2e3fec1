/**
 * How much GPU memory a training update needs, estimated before allocating
 * anything: weights, gradients, optimizer state, EM-RL's reference, and the
 * activations one micro-batch keeps for backward. The activation count
 * follows the decoder's forward op by op (every intermediate stays alive
 * until backward ends), each buffer rounded to the pool's size class. The
 * fused attention keeps O(T) per layer: its output and one log-sum-exp per row.
 * @module
 */
import { sizeClass } from "../engine/buffer_pool.ts";
import type { DecoderConfig } from "../engine/model/config.ts";
import type { LoraTarget } from "../engine/model/lora.ts";

export interface MemoryPlan {
  /** Sequences per forward/backward and their padded length. */
  microBatch: number;
  seqLength: number;
  /** Scored positions per micro-batch (response tokens). */
  scored: number;
  /** Bytes per stored weight element: 4 (f32 training), or the checkpoint's 2 under LoRA. */
  weightBytes: 2 | 4;
  lora: { rank: number; targets: readonly LoraTarget[] } | null;
  recompute: boolean;
  /** EM-RL with a KL term and no LoRA: a frozen f32 copy of the weights. */
  reference: boolean;
  /** Rows of the head per chunk (binding-limited); default as the trainer's headAt. */
  maxBinding: number;
}

export interface MemoryEstimate {
  weights: number;
  adapters: number;
  gradients: number;
  optimizer: number;
  reference: number;
  activations: number;
  total: number;
}

const f32 = (n: number) => (n > 0 ? sizeClass(4 * n) : 0);

/** Parameter count of a config. */
export function parameterCount(c: DecoderConfig): number {
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const layer = 2 * c.hiddenSize + c.hiddenSize * (q + 2 * kv) + q * c.hiddenSize +
    3 * c.hiddenSize * c.intermediateSize + (c.attentionBias ? q + 2 * kv : 0) +
    (c.qkNorm ? 2 * c.headDim : 0);
  return c.vocabSize * c.hiddenSize * (c.tieWordEmbeddings ? 1 : 2) + c.hiddenSize +
    c.numLayers * layer;
}

/** (in, out) features of each LoRA target's linear layer. */
function targetShape(c: DecoderConfig, t: LoraTarget): [number, number] {
  const [C, I] = [c.hiddenSize, c.intermediateSize];
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  return ({
    q: [C, q],
    k: [C, kv],
    v: [C, kv],
    o: [q, C],
    gate: [C, I],
    up: [C, I],
    down: [I, C],
  } as const)[t] as [number, number];
}

/** The activations one layer's forward keeps, in pool bytes, for N tokens of m rows. */
export function layerActivations(
  c: DecoderConfig,
  m: number,
  T: number,
  lora: MemoryPlan["lora"] = null,
): number {
  const N = m * T;
  const C = c.hiddenSize;
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const I = c.intermediateSize;
  let b = f32(N * C) + f32(N); // input RMSNorm and its rstd
  b += f32(N * q) * (c.attentionBias ? 2 : 1) + f32(N * q) * 2; // q linear (+bias), permute, rope
  b += f32(N * kv) * (c.attentionBias ? 2 : 1) + f32(N * kv) * 2; // k
  b += f32(N * kv) * (c.attentionBias ? 2 : 1) + f32(N * kv); // v
  if (c.qkNorm) b += f32(N * q) + f32(N * c.numHeads) + f32(N * kv) + f32(N * c.numKvHeads);
  b += f32(N * q) + f32(N * c.numHeads); // fused attention: output and log-sum-exp
  b += f32(N * q) + 2 * f32(N * C); // permute, o projection, residual
  b += f32(N * C) + f32(N); // post-attention RMSNorm
  b += 3 * f32(N * I) + 2 * f32(N * C); // gate, up, silu(gate)·up; down, residual
  // each LoRA term: x·Aᵀ (N, r), then ·Bᵀ, its scaling and the sum with the base output (N, out)
  for (const t of lora?.targets ?? []) b += f32(N * lora!.rank) + 3 * f32(N * targetShape(c, t)[1]);
  return b;
}

/** Estimates an update's GPU bytes for `config` under `plan`. */
export function estimateTraining(c: DecoderConfig, plan: MemoryPlan): MemoryEstimate {
  const P = parameterCount(c);
  const { microBatch: m, seqLength: T } = plan;
  const N = m * T;
  const weights = P * plan.weightBytes;
  const lora = plan.lora;
  const loraParams = lora
    ? c.numLayers * lora.rank *
      lora.targets.reduce((n, t) => n + targetShape(c, t)[0] + targetShape(c, t)[1], 0)
    : 0;
  const trainable = plan.lora ? loraParams : P;
  const gradients = 4 * trainable;
  const optimizer = 8 * trainable;
  const reference = plan.reference && !plan.lora ? 4 * P : 0;
  // embedding, rope tables, key mask, final norm; then the layers (all, or one plus the inputs)
  let activations = 2 * f32(N * c.hiddenSize) + f32(N) + 2 * f32(N * c.headDim) + f32(N);
  const layer = layerActivations(c, m, T, lora);
  activations += plan.recompute
    ? c.numLayers * f32(N * c.hiddenSize) + layer // the layers' inputs; one layer recomputed
    : c.numLayers * layer;
  // then the larger of two phases: the head, and a layer's backward (the MLP's gradients in
  // flight, and the residual stream's gradient in and out). The head keeps every scored
  // position's logits for backward (twice when the weight is split into vocabulary chunks that
  // fit a binding: the chunks' products and their concatenation), plus one row chunk's logit
  // gradients in flight.
  const rows = Math.max(1, Math.min(plan.scored, Math.floor(plan.maxBinding / (4 * c.vocabSize))));
  const chunked = c.vocabSize * c.hiddenSize * plan.weightBytes > plan.maxBinding;
  let logits = 0;
  for (let r = 0; r < plan.scored; r += rows) {
    logits += f32(Math.min(rows, plan.scored - r) * c.vocabSize);
  }
  const head = f32(plan.scored * c.hiddenSize) + (chunked ? 2 : 1) * logits +
    2 * f32(rows * c.vocabSize);
  activations += Math.max(head, 2 * f32(N * c.intermediateSize) + 2 * f32(N * c.hiddenSize));
  const total = weights + loraParams * 4 + gradients + optimizer + reference + activations;
  return { weights, adapters: loraParams * 4, gradients, optimizer, reference, activations, total };
}
