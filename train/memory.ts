/**
 * How much GPU memory a training update needs, estimated from config.json
 * before allocating anything (weights, gradients, optimizer state, EM-RL's
 * reference, and the activations one micro-batch keeps for backward), the
 * limit it must fit, and the report --dry-run prints. The activation count
 * follows the decoder's forward op by op (every intermediate stays alive
 * until backward ends), each buffer rounded to the pool's size class. The
 * fused attention keeps O(T) per layer: its output and one log-sum-exp per row.
 * @module
 */
import { sizeClass } from "../engine/buffer_pool.ts";
import { type DecoderConfig, linearShapes, parameterCount } from "../engine/model/config.ts";
import type { LoraTarget } from "../engine/model/lora.ts";
import { parseQuantizationConfig } from "../engine/quant/checkpoints.ts";
import { QUANT_SCHEMES, type QuantBits } from "../engine/quant/format.ts";
import { modelWeightBytes } from "../engine/quant/weight.ts";
import type { TrainOptions } from "./options.ts";

export { parameterCount };

export interface MemoryPlan {
  /** Sequences per forward/backward and their padded length. */
  microBatch: number;
  seqLength: number;
  /** Scored positions per micro-batch (response tokens). */
  scored: number;
  /** Bytes per stored weight element: 4 (f32 training), or the checkpoint's 2 under LoRA. */
  weightBytes: 2 | 4;
  /** The layers' linear matrices quantized (frozen: LoRA only), or null. */
  quant?: { bits: QuantBits; groupSize: number } | null;
  lora: { rank: number; targets: readonly LoraTarget[] } | null;
  recompute: boolean;
  /** EM-RL with a KL term and no LoRA: a frozen f32 copy of the weights. */
  reference: boolean;
  /** The adapter's storage binding limit in bytes: the head's logits come in row chunks that fit it. */
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
  for (const t of lora?.targets ?? []) {
    b += f32(N * lora!.rank) + 3 * f32(N * linearShapes(c)[t][0]);
  }
  return b;
}

/** Estimates an update's GPU bytes for `config` under `plan`. */
export function estimateTraining(c: DecoderConfig, plan: MemoryPlan): MemoryEstimate {
  const P = parameterCount(c);
  const { microBatch: m, seqLength: T } = plan;
  const N = m * T;
  const weights = modelWeightBytes(c, plan.weightBytes, plan.quant ?? null);
  const lora = plan.lora;
  const loraParams = lora
    ? c.numLayers * lora.rank *
      lora.targets.reduce((n, t) => n + linearShapes(c)[t][0] + linearShapes(c)[t][1], 0)
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

/** The quantization a model will have: a GPTQ/AWQ checkpoint's, or --quantize's, or null. */
export function quantOf(
  c: DecoderConfig,
  quantize: "int4" | "int8" | null | undefined,
): { bits: QuantBits; groupSize: number } | null {
  const stored = parseQuantizationConfig(c.raw, "config.json");
  if (stored) return { bits: stored.bits, groupSize: stored.groupSize };
  return quantize ? QUANT_SCHEMES[quantize] : null;
}

/** Total system memory in bytes, or null without the permission to read it. */
export function systemMemory(): number | null {
  const state = Deno.permissions.querySync({ name: "sys", kind: "systemMemoryInfo" }).state;
  return state === "granted" ? Deno.systemMemoryInfo().total : null;
}

const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;

/**
 * The estimate of a run's update and the limit it must fit: `seqLength`
 * (default: the prompt allowance plus max-new-tokens, within the context),
 * `limitBytes` (default: this machine's memory, a CPU adapter's; WebGPU
 * reports no device memory size).
 */
export function planMemory(
  config: DecoderConfig,
  o: TrainOptions,
  plan: { seqLength?: number; promptLength: number; limitBytes?: number },
): { estimate: MemoryEstimate; limit: number } {
  const seqLength = plan.seqLength ??
    Math.min(config.maxPositionEmbeddings, plan.promptLength + o.maxNewTokens);
  const lora = o.loraRank > 0 ? { rank: o.loraRank, targets: o.loraTargets } : null;
  const stored = config.raw.torch_dtype ?? config.raw.dtype;
  const quant = quantOf(config, o.quantize);
  const estimate = estimateTraining(config, {
    microBatch: o.microBatch,
    seqLength,
    scored: o.microBatch * Math.min(o.maxNewTokens, seqLength),
    // with LoRA the base stays in its stored precision
    weightBytes: lora && stored !== "float32" ? 2 : 4,
    quant,
    lora,
    recompute: o.recompute,
    reference: o.method === "em-rl" && o.klCoef > 0,
    maxBinding: 128 * 2 ** 20,
  });
  return { estimate, limit: plan.limitBytes ?? systemMemory() ?? Infinity };
}

/** What --dry-run prints: the estimate by category, and whether it fits 16 and 24 GB. */
export function dryRunReport(
  c: DecoderConfig,
  e: MemoryEstimate,
  dir: string,
  o: TrainOptions,
): string {
  const lines = [
    `dry run: ${dir} (${c.architecture}, ${
      (parameterCount(c) / 1e9).toFixed(2)
    }B parameters), ${o.method}, micro-batch ${o.microBatch}${
      o.loraRank ? `, LoRA rank ${o.loraRank}` : ", full fine-tuning"
    }${o.recompute ? ", --recompute" : ""}${
      quantOf(c, o.quantize) ? `, ${describeQuant(c, o.quantize)} weights` : ""
    }`,
    `  weights      ${gib(e.weights)}`,
    `  LoRA         ${gib(e.adapters)}`,
    `  gradients    ${gib(e.gradients)}`,
    `  optimizer    ${gib(e.optimizer)}`,
    `  reference    ${gib(e.reference)}`,
    `  activations  ${gib(e.activations)} (one micro-batch, kept for backward)`,
    `  total        ${gib(e.total)}`,
  ];
  for (const gb of [16, 24]) {
    lines.push(
      `  fits in ${gb} GiB (a "${gb} GB" card): ${e.total <= gb * 2 ** 30 ? "yes" : "no"}`,
    );
  }
  return lines.join("\n");
}

function describeQuant(c: DecoderConfig, quantize: "int4" | "int8" | null | undefined): string {
  const stored = parseQuantizationConfig(c.raw, "config.json");
  const q = quantOf(c, quantize)!;
  return `${stored ? stored.method.toUpperCase() + " " : ""}int${q.bits} (groups of ${
    q.groupSize || "a row"
  })`;
}

/** The error when an estimate exceeds the limit, with what to change. */
export function memoryRefusal(e: MemoryEstimate, limit: number): string {
  return `this update needs about ${
    gib(e.total)
  } of GPU memory (--dry-run shows why), more than the ${
    gib(limit)
  } available (--memory-limit); lower --micro-batch, add --recompute, or train LoRA adapters with --lora-rank`;
}
