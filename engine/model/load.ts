/**
 * The checkpoint loader: config.json through its family, model.safetensors
 * or shards, dtype kept or upcast, weights past the binding limit split into
 * row chunks, quantized at load or repacked from GPTQ/AWQ, checks for NaN/Inf
 * and unused tensors, tokenizer and generation_config.json precedence. It
 * reads through a CheckpointSource: a directory (checkpoint.ts's loadModel)
 * or a URL (url_source.ts, in a browser).
 * @module
 */
import { device, initDevice } from "../device.ts";
import { cast, nonFiniteCounts } from "../ops/mod.ts";
import { type RawTensor, toFloat32 } from "../safetensors_format.ts";
import { keep } from "../scope.ts";
import { numel, type Tensor } from "../tensor.ts";
import { tensorFromRaw } from "../tensor_io.ts";
import type { CausalLM, GenerationDefaults, Parameter } from "./causal_lm.ts";
import {
  ConfigError,
  type DecoderConfig,
  decoderParameters,
  LINEAR_LAYERS,
  tokenIdList,
} from "./config.ts";
import { parseQuantizationConfig, repackQuantized } from "../quant/checkpoints.ts";
import {
  layoutProblem,
  type PackedMatrix,
  QUANT_SCHEMES,
  quantizeMatrix,
  type QuantScheme,
} from "../quant/format.ts";
import { QuantizedWeight } from "../quant/weight.ts";
import { DecoderLM } from "./decoder.ts";
import { isQwenConfig, parseQwenConfig } from "./qwen.ts";
import { Checkpoint } from "./shards.ts";
import { type CheckpointSource, readJsonObject } from "./source.ts";
import { QwenTokenizer } from "./tokenizer.ts";

/** Every family the loader knows: how to recognise its config.json and parse it. */
const FAMILIES: {
  matches: (raw: Record<string, unknown>) => boolean;
  parse: (raw: Record<string, unknown>, path: string) => DecoderConfig;
}[] = [{ matches: isQwenConfig, parse: parseQwenConfig }];

/** Parses a config.json object with the family it belongs to; `path` names it in errors. */
export function parseConfig(raw: Record<string, unknown>, path = "config.json"): DecoderConfig {
  const family = FAMILIES.find((f) => f.matches(raw)) ?? FAMILIES[0]; // its parser names the field
  return family.parse(raw, path);
}

/** A linear's parameter holding a quantized matrix. */
function quantizedParameter(
  name: string,
  shape: number[],
  packed: PackedMatrix,
  chunkBytes?: number,
): Parameter {
  const quant = QuantizedWeight.upload(packed, chunkBytes);
  quant.tensors().forEach((t) => keep(t));
  return { name, shape, chunks: quant.tensors(), quant };
}

/** Options of loadModel. */
export interface LoadOptions {
  /**
   * Quantize the decoder layers' linear weights at load (frozen, packed on the
   * GPU: engine/quant): "int4"/"int8" take QUANT_SCHEMES' group size and
   * symmetry. A GPTQ/AWQ checkpoint (config.json quantization_config) is
   * loaded as published without it.
   */
  quantize?: "int4" | "int8" | QuantScheme;
  /** "f32" upcasts every weight (for training); "stored" keeps bf16/f16 as stored (default). */
  dtype?: "f32" | "stored";
  /** Parameters require grad (implies dtype "f32"). */
  trainable?: boolean;
  /** Largest chunk of a 2-D weight in bytes (default: the adapter's maxStorageBufferBindingSize). */
  chunkBytes?: number;
  /** Refuse weights holding NaN or Inf, naming the first such tensor (default true; one GPU pass). */
  checkFinite?: boolean;
  /** Where warnings go, e.g. checkpoint tensors the config does not use (default console.warn). */
  warn?: (message: string) => void;
}

/** Rows per chunk so that one chunk fits a storage binding (or `limit` bytes). */
function rowsPerChunk(
  rows: number,
  cols: number,
  bytesPerElement: number,
  limitBytes?: number,
): number {
  const limit = Math.min(limitBytes ?? Infinity, device().info.maxStorageBufferBindingSize);
  const per = Math.floor(limit / (cols * bytesPerElement));
  return Math.min(rows, Math.max(1, per));
}

/** Uploads a raw 2-D tensor as row chunks that each fit a binding. */
function uploadChunks(raw: RawTensor, name: string, toF32: boolean, chunkBytes?: number): Tensor[] {
  const [rows, cols] = raw.shape.length === 2 ? raw.shape : [1, numel(raw.shape)];
  const elem = raw.data.byteLength / Math.max(1, numel(raw.shape));
  const finalBytes = toF32 ? 4 : elem;
  const per = raw.shape.length === 2
    ? rowsPerChunk(rows, cols, Math.max(elem, finalBytes), chunkBytes)
    : rows;
  const chunks: Tensor[] = [];
  for (let r = 0; r < rows; r += per) {
    const n = Math.min(per, rows - r);
    const part: RawTensor = {
      dtype: raw.dtype,
      shape: raw.shape.length === 2 ? [n, cols] : raw.shape,
      data: raw.data.subarray(r * cols * elem, (r + n) * cols * elem),
    };
    let t = tensorFromRaw(part, name);
    if (toF32 && t.dtype !== "f32") {
      const f = cast(t, "f32");
      t.dispose();
      t = f;
    }
    chunks.push(keep(t));
  }
  return chunks;
}

/** The source's config.json through its family; every problem is a ConfigError naming the file. */
export async function configFrom(source: CheckpointSource): Promise<DecoderConfig> {
  const path = `${source.name}/config.json`;
  let text: string | null;
  try {
    text = await source.text("config.json");
  } catch (e) {
    throw new ConfigError(path, `cannot read (${(e as Error).message})`);
  }
  if (text === null) throw new ConfigError(path, "cannot read (no such file)");
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(path, `is not valid JSON (${(e as Error).message})`);
  }
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) {
    throw new ConfigError(path, "is not a JSON object");
  }
  return parseConfig(raw as Record<string, unknown>, path);
}

/** The tokenizer of a source (tokenizer.json, tokenizer_config.json), or null without one. */
export async function tokenizerFrom(source: CheckpointSource): Promise<QwenTokenizer | null> {
  const json = await readJsonObject(source, "tokenizer.json");
  if (!json) return null;
  const config = await readJsonObject(source, "tokenizer_config.json") ?? {};
  return new QwenTokenizer(json, config, source.name);
}

/** Loads the checkpoint `source` holds (see loadModel for a directory). */
export async function loadFrom(
  source: CheckpointSource,
  options: LoadOptions & { sourceDir?: string | null } = {},
): Promise<CausalLM> {
  await initDevice();
  const dir = source.name;
  const config = await configFrom(source);
  const gen = await readJsonObject(source, "generation_config.json");
  const tokenizer = await tokenizerFrom(source);
  if (tokenizer && tokenizer.vocabSize > config.vocabSize) {
    throw new ConfigError(
      `${dir}/config.json`,
      `vocab_size is ${config.vocabSize}, but ${dir}/tokenizer.json has ids up to ${
        tokenizer.vocabSize - 1
      }: the tokenizer belongs to another model`,
    );
  }
  const toF32 = options.trainable || options.dtype === "f32";
  const stored = parseQuantizationConfig(config.raw, `${dir}/config.json`);
  if (stored && options.quantize) {
    throw new Error(
      `${dir}: the checkpoint is already quantized (quantization_config ${stored.method} int${stored.bits}); load it without quantize (--quantize)`,
    );
  }
  if ((stored || options.quantize) && options.trainable) {
    throw new Error(
      `${dir}: quantized weights are frozen: train LoRA adapters on them (--lora-rank R)`,
    );
  }
  const scheme = typeof options.quantize === "string"
    ? QUANT_SCHEMES[options.quantize]
    : options.quantize ?? null;
  const linears = new Set(
    Array.from({ length: config.numLayers }, (_, i) => config.names.layer(i))
      .flatMap((n) => LINEAR_LAYERS.map((t) => n[t])),
  );
  const ckpt = await Checkpoint.open(source);
  const parameters: Parameter[] = [];
  const read: string[] = []; // checkpoint tensors used
  try {
    for (const [name, shape] of decoderParameters(config)) {
      if (stored && linears.has(name)) {
        // a GPTQ/AWQ linear: <prefix>.qweight, qzeros, scales (and g_idx)
        const prefix = name.replace(/\.weight$/, "");
        const get = async (suffix: string, optional = false) => {
          const key = `${prefix}.${suffix}`;
          if (!ckpt.entry(key)) {
            if (optional) return null;
            throw new Error(
              `${dir}: checkpoint has no tensor "${key}" (quantization_config ${stored.method})`,
            );
          }
          read.push(key);
          return await ckpt.read(key);
        };
        const packed = repackQuantized(
          prefix,
          {
            qweight: (await get("qweight"))!,
            qzeros: (await get("qzeros"))!,
            scales: (await get("scales"))!,
            gIdx: stored.method === "gptq" ? await get("g_idx", true) : null,
          },
          shape[0],
          shape[1],
          stored,
        );
        parameters.push(quantizedParameter(name, shape, packed, options.chunkBytes));
        continue;
      }
      const entry = ckpt.entry(name);
      if (!entry) {
        throw new Error(`${dir}: checkpoint has no tensor "${name}" (needed by config.json)`);
      }
      if (entry.shape.join() !== shape.join()) {
        throw new Error(
          `${
            ckpt.fileOf(name)
          }: tensor "${name}" has shape [${entry.shape}], config.json implies [${shape}]`,
        );
      }
      if (!["F32", "BF16", "F16"].includes(entry.dtype)) {
        throw new Error(
          `${ckpt.fileOf(name)}: tensor "${name}" is ${entry.dtype}; expected F32, BF16 or F16`,
        );
      }
      const raw = await ckpt.read(name);
      read.push(name);
      if (
        scheme && linears.has(name) &&
        layoutProblem(shape[1], scheme.groupSize || shape[1]) === null
      ) {
        const packed = quantizeMatrix(toFloat32(raw), shape[0], shape[1], scheme);
        parameters.push(quantizedParameter(name, shape, packed, options.chunkBytes));
        continue;
      }
      // vectors (norms, biases) are small: always f32
      const chunks = uploadChunks(raw, name, toF32 || shape.length === 1, options.chunkBytes);
      if (options.trainable) chunks.forEach((t) => t.requiresGrad = true);
      parameters.push({ name, shape, chunks });
    }
    checkUnused(dir, config, ckpt.names, read, options.warn ?? console.warn);
    if (options.checkFinite !== false) await checkFinite(parameters, ckpt);
  } catch (e) {
    parameters.forEach((p) => p.chunks.forEach((t) => t.dispose()));
    throw e;
  } finally {
    ckpt.close();
  }
  const eos = [
    ...new Set([
      ...tokenIdList(gen?.eos_token_id),
      ...config.eosTokenIds,
      ...(gen || config.eosTokenIds.length ? [] : tokenizer?.eosTokenIds ?? []),
    ]),
  ];
  const generation: GenerationDefaults = {
    eosTokenIds: eos.length ? eos : tokenizer?.eosTokenIds ?? [],
    padTokenId: (gen?.pad_token_id as number | undefined) ?? config.padTokenId ??
      tokenizer?.padTokenId ?? null,
    temperature: gen?.temperature as number | undefined,
    topP: gen?.top_p as number | undefined,
    topK: gen?.top_k as number | undefined,
  };
  return new DecoderLM(config, parameters, {
    tokenizer,
    generation,
    sourceDir: options.sourceDir ?? null,
  });
}

/**
 * Checkpoint tensors the config does not use: an error for layer tensors (a
 * config with fewer layers, or without a feature the weights have, would run
 * a different model), a warning for others, as transformers reports "weights
 * not used". RoPE inv_freq buffers of old checkpoints are ignored, as there.
 */
function checkUnused(
  dir: string,
  config: DecoderConfig,
  names: string[],
  read: string[],
  warn: (message: string) => void,
): void {
  const used = new Set([...decoderParameters(config).map(([n]) => n), ...read]);
  if (config.tieWordEmbeddings) used.add(config.names.lmHead); // tied: the same tensor
  const unused = names.filter((n) => !used.has(n) && !n.endsWith("rotary_emb.inv_freq"));
  const layer = unused.find((n) => config.names.layerOf(n) !== null);
  if (layer) {
    const i = config.names.layerOf(layer)!;
    throw new Error(
      i >= config.numLayers
        ? `${dir}: the checkpoint has tensors of layer ${i} ("${layer}") but config.json says num_hidden_layers ${config.numLayers}; fix config.json or the checkpoint`
        : `${dir}: the checkpoint has tensor "${layer}", which config.json (${config.architecture}) does not use; the config does not match the weights`,
    );
  }
  if (unused.length) {
    warn(`${dir}: weights not used by ${config.architecture}: ${unused.join(", ")}`);
  }
}

/** Throws naming the first parameter (in checkpoint order) that holds NaN or Inf. */
async function checkFinite(all: Parameter[], ckpt: Checkpoint): Promise<void> {
  const parameters = all.filter((p) => !p.quant); // integer codes; their scales were f16-rounded
  const counts = await nonFiniteCounts(parameters.flatMap((p) => p.chunks));
  let at = 0;
  for (const p of parameters) {
    const n = counts.slice(at, at += p.chunks.length).reduce((a, b) => a + b, 0);
    if (n > 0) {
      throw new Error(
        `${ckpt.fileOf(p.name)}: tensor "${p.name}" holds ${n} NaN/Inf value${
          n === 1 ? "" : "s"
        }: the checkpoint is corrupt or overflowed when converted. ` +
          "Load it anyway with checkFinite: false (CLI: --no-weight-check)",
      );
    }
  }
}
