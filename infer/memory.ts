/**
 * What decoding needs in GPU memory, from config.json alone (before
 * downloading or loading any weight): the weights as they will be stored
 * (bf16/f16 as in the checkpoint, quantized linears), the KV cache for a
 * batch and context, the prompt's prefill working set, and EM-INF's
 * per-step buffers. `deno task generate --dry-run` and `serve --dry-run`
 * print it.
 * @module
 */
import type { DecoderConfig } from "../engine/model/config.ts";
import { parameterCount } from "../engine/model/config.ts";
import { readConfig } from "../engine/model/checkpoint.ts";
import { parseQuantizationConfig } from "../engine/quant/checkpoints.ts";
import { QUANT_SCHEMES, type QuantBits } from "../engine/quant/format.ts";
import { modelWeightBytes } from "../engine/quant/weight.ts";
import { sizeClass } from "../engine/buffer_pool.ts";
import { PREFILL_CHUNK } from "./generate.ts";

export interface InferenceMemory {
  weights: number;
  kvCache: number;
  /** The largest layer's working set in one prefill pass (generate's prefillChunk), and the last logits. */
  prefill: number;
  /** EM-INF's buffers per step: logits, the reference distribution, gradients, Adam moments. */
  emInf: number;
  total: number;
}

export function inferenceMemory(
  c: DecoderConfig,
  o: {
    batch: number;
    context: number;
    /** Bytes per stored weight element (2: bf16/f16 kept as stored, 4: f32). */
    elementBytes: number;
    quant: { bits: QuantBits; groupSize: number } | null;
    emInf: boolean;
    /** Prompt tokens per prefill pass (generate's default 512). */
    prefillChunk?: number;
  },
): InferenceMemory {
  const weights = modelWeightBytes(c, o.elementBytes, o.quant);
  const kv = c.numKvHeads * c.headDim;
  const q = c.numHeads * c.headDim;
  // f32 keys and values of every layer, allocated at their exact size
  const kvCache = 2 * c.numLayers * o.batch * o.context * kv * 4;
  const tokens = o.batch * Math.min(o.context, o.prefillChunk ?? PREFILL_CHUNK);
  // x, its norm, the residual; q, k, v; attention out; gate, up, silu(gate)·up; the last logits:
  // f32 buffers from the pool, each rounded up to its size class (weights and the KV cache are
  // allocated exactly)
  const widths = [
    ...Array(3).fill(c.hiddenSize),
    q,
    q,
    kv,
    kv,
    ...Array(3).fill(c.intermediateSize),
  ];
  const prefill = widths.reduce((n, w) => n + sizeClass(4 * tokens * w), 0) +
    sizeClass(4 * o.batch * c.vocabSize);
  const emInf = o.emInf ? 8 * 4 * o.batch * c.vocabSize : 0;
  return { weights, kvCache, prefill, emInf, total: weights + kvCache + prefill + emInf };
}

const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;

/** The report --dry-run prints. */
export function inferenceReport(
  c: DecoderConfig,
  m: InferenceMemory,
  what: {
    dir: string;
    batch: number;
    context: number;
    weights: string;
    emInf: boolean;
    prefillChunk: number;
  },
): string {
  const pass = what.prefillChunk < what.context
    ? `a ${what.prefillChunk}-token prefill pass`
    : "the whole prompts' prefill";
  return [
    `dry run: ${what.dir} (${c.architecture}, ${
      (parameterCount(c) / 1e9).toFixed(2)
    }B parameters), ${what.weights} weights, batch ${what.batch}, context ${what.context}${
      what.emInf ? ", EM-INF" : ""
    }`,
    `  weights   ${gib(m.weights)}`,
    `  KV cache  ${gib(m.kvCache)} (f32 keys and values)`,
    `  prefill   ${gib(m.prefill)} (one layer's working set in ${pass}, the last logits)`,
    ...(what.emInf ? [`  EM-INF    ${gib(m.emInf)}`] : []),
    `  total     ${gib(m.total)}`,
    ...[16, 24].map((gb) =>
      `  fits in ${gb} GiB (a "${gb} GB" card): ${m.total <= gb * 2 ** 30 ? "yes" : "no"}`
    ),
  ].join("\n");
}

/**
 * The dry-run report of decoding with the checkpoint config at `dir`
 * (config.json only): `context` tokens (default the model's, at most 4096)
 * for `batch` sequences.
 */
export async function inferenceDryRun(
  dir: string,
  o: {
    batch: number;
    context?: number;
    /** The default context is the model's, at most this (default 4096). */
    contextCap?: number;
    quantize?: "int4" | "int8";
    emInf: boolean;
    /** Prompt tokens per prefill pass (default generate's; serve prefills whole prompts). */
    prefillChunk?: number;
  },
): Promise<string> {
  const c = await readConfig(dir);
  const stored = parseQuantizationConfig(c.raw, `${dir}/config.json`);
  const dtype = String(c.raw.torch_dtype ?? c.raw.dtype ?? "bfloat16");
  const elementBytes = dtype === "float32" ? 4 : 2;
  const quant = stored ?? (o.quantize ? QUANT_SCHEMES[o.quantize] : null);
  const context = o.context ?? Math.min(c.maxPositionEmbeddings, o.contextCap ?? 4096);
  const prefillChunk = o.prefillChunk ?? PREFILL_CHUNK;
  const m = inferenceMemory(c, {
    batch: o.batch,
    context,
    elementBytes,
    quant,
    emInf: o.emInf,
    prefillChunk,
  });
  const weights = quant
    ? `${stored ? `${stored.method.toUpperCase()} ` : ""}int${quant.bits} (groups of ${
      quant.groupSize || "a row"
    }) linear`
    : dtype;
  return inferenceReport(c, m, {
    dir,
    batch: o.batch,
    context,
    weights,
    emInf: o.emInf,
    prefillChunk,
  });
}
