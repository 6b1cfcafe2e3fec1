/**
 * Hugging Face checkpoint directories: loading (config.json through its
 * family, model.safetensors or shards, dtype kept or upcast, weights past the
 * binding limit split into row chunks, checks for NaN/Inf and unused
 * tensors, tokenizer and generation_config.json precedence) and saving
 * (atomic, never over the source).
 * @module
 */
import { atomicWrite, recoverDirectory, replaceDirectory, tempDirectoryBeside } from "../atomic.ts";
import { device, initDevice } from "../device.ts";
import { cast, nonFiniteCounts } from "../ops/mod.ts";
import { exists, parentOf } from "../paths.ts";
import { type RawTensor, toFloat32, writeSafetensors } from "../safetensors.ts";
import { keep } from "../scope.ts";
import { f32ToBf16, f32ToF16, numel, type Tensor } from "../tensor.ts";
import { tensorFromRaw, tensorsToRaw } from "../tensor_io.ts";
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
  dequantizeMatrix,
  layoutProblem,
  type PackedMatrix,
  QUANT_SCHEMES,
  quantizeMatrix,
  type QuantScheme,
} from "../quant/format.ts";
import { QuantizedWeight } from "../quant/weight.ts";
import { DecoderLM } from "./decoder.ts";
import { type Adapter, LoraAdapters } from "./lora.ts";
import { isQwenConfig, parseQwenConfig } from "./qwen.ts";
import { Checkpoint } from "./shards.ts";
import { loadTokenizer, type QwenTokenizer } from "./tokenizer.ts";

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

/** Reads and parses `dir/config.json`. */
export async function readConfig(dir: string): Promise<DecoderConfig> {
  const path = `${dir}/config.json`;
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new ConfigError(path, `cannot read (${(e as Error).message})`);
  }
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

/** Reads the optional JSON file `dir/name`, or null when absent. */
async function readJsonIfPresent(
  dir: string,
  name: string,
): Promise<Record<string, unknown> | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(`${dir}/${name}`);
  } catch {
    return null;
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${dir}/${name}: is not valid JSON (${(e as Error).message})`);
  }
}

/**
 * The base model a PEFT adapter directory names (adapter_config.json's
 * base_model_name_or_path), as a local directory: the path as given, or
 * relative to the adapter directory.
 */
export async function adapterBase(dir: string): Promise<string> {
  const path = `${dir}/adapter_config.json`;
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new Error(`${path}: cannot read (${(e as Error).message})`);
  }
  const base = raw.base_model_name_or_path;
  if (typeof base !== "string" || !base) {
    throw new Error(`${path}: base_model_name_or_path is missing: it names the model to adapt`);
  }
  const candidates = base.startsWith("/") ? [base] : [base, `${dir}/${base}`];
  for (const c of candidates) if (await exists(`${c}/config.json`)) return c;
  throw new Error(
    `${path}: base_model_name_or_path "${base}" is not a checkpoint directory here (no config.json in ${
      candidates.join(" or ")
    }); download the base model and set the field to its path`,
  );
}

/**
 * Loads a Hugging Face Qwen2/Qwen2.5/Qwen3 checkpoint directory: config.json,
 * model.safetensors (or shards), and when present tokenizer.json,
 * tokenizer_config.json and generation_config.json. A PEFT LoRA adapter
 * directory (adapter_config.json, no config.json) loads the base it names,
 * frozen in its stored precision, with the adapters attached (trainable), as
 * `AutoPeftModelForCausalLM` does.
 */
export async function loadModel(dir: string, options: LoadOptions = {}): Promise<CausalLM> {
  await initDevice();
  // a save interrupted between its renames leaves the directory recoverable
  if (!await exists(dir)) await recoverDirectory(dir);
  if (!await exists(`${dir}/config.json`) && await exists(`${dir}/adapter_config.json`)) {
    const model = await loadModel(await adapterBase(dir), { ...options, trainable: false });
    try {
      model.setAdapters(await LoraAdapters.load(dir, model.config));
    } catch (e) {
      model.dispose();
      throw e;
    }
    return model;
  }
  const config = await readConfig(dir);
  const gen = await readJsonIfPresent(dir, "generation_config.json");
  let tokenizer: QwenTokenizer | null = null;
  if (await exists(`${dir}/tokenizer.json`)) tokenizer = await loadTokenizer(dir);
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
  const ckpt = await Checkpoint.open(dir);
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
    sourceDir: await Deno.realPath(dir),
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

const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "generation_config.json",
  "vocab.json",
  "merges.txt",
  "special_tokens_map.json",
  "added_tokens.json",
];

/**
 * Writes the model as a Hugging Face directory (config.json, model.safetensors,
 * tokenizer files copied from the source). Written to a temporary directory,
 * then renamed into place; never over the directory the model was loaded from.
 */
export async function saveModel(
  model: CausalLM,
  outDir: string,
  options: {
    metadata?: Record<string, string>;
    copyFrom?: string | null;
    /** Writes more files into the new directory before it is swapped in (e.g. optimizer state). */
    extra?: (tmpDir: string) => Promise<void>;
    /** Allow replacing the directory the model was loaded from (a trainer's own checkpoint on resume). */
    replaceSource?: boolean;
    /** Fold the model's LoRA adapters into the weights they adapt (a full merged checkpoint). */
    merge?: boolean;
    /** Runs while neither the old nor the new directory is at `outDir` (tests crash here). */
    afterRetiringOld?: () => Promise<void>;
  } = {},
): Promise<void> {
  const source = options.copyFrom ?? model.sourceDir;
  await Deno.mkdir(parentOf(outDir), { recursive: true });
  let resolvedOut: string | null = null;
  try {
    resolvedOut = await Deno.realPath(outDir);
  } catch { /* does not exist yet */ }
  if (resolvedOut && model.sourceDir && resolvedOut === model.sourceDir && !options.replaceSource) {
    throw new Error(
      `saveModel: ${outDir} is the checkpoint the model was loaded from; choose another directory`,
    );
  }
  const tmp = await tempDirectoryBeside(outDir);
  try {
    const tensors = new Map<
      string,
      { dtype: RawTensor["dtype"]; shape: number[]; data: Uint8Array }
    >();
    let dtype: RawTensor["dtype"] = "F32";
    const quantized = model.parameters.filter((p) => p.quant);
    if (quantized.length && !options.merge) {
      throw new Error(
        `saveModel: ${
          quantized[0].name
        } is quantized (frozen): save the LoRA adapters trained on it, or merge them into a bf16 checkpoint (merge: true, CLI --merge)`,
      );
    }
    const chunks: (RawTensor | null)[] = await tensorsToRaw(
      model.parameters.flatMap((p) => p.chunks),
    );
    let next = 0;
    for (const p of model.parameters) {
      const parts = chunks.slice(next, next + p.chunks.length) as RawTensor[];
      chunks.fill(null, next, next += p.chunks.length); // a chunked weight's pieces go once joined
      tensors.set(p.name, await joinChunks(p, parts, options.merge ? model.adapters : null));
      if (p.shape.length === 2) dtype = parts[0].dtype;
    }
    await writeSafetensors(`${tmp}/model.safetensors`, tensors, {
      format: "pt",
      ...options.metadata,
    });
    // quantized weights are written dequantized, in bf16: a full-precision checkpoint
    const { quantization_config: _, ...raw } = model.config.raw;
    const config = {
      ...raw,
      dtype: quantized.length || dtype === "BF16"
        ? "bfloat16"
        : dtype === "F16"
        ? "float16"
        : "float32",
    };
    await atomicWrite(`${tmp}/config.json`, async (f) => {
      await f.write(new TextEncoder().encode(JSON.stringify(config, null, 2) + "\n"));
    });
    if (source) {
      for (const name of TOKENIZER_FILES) {
        try {
          await Deno.copyFile(`${source}/${name}`, `${tmp}/${name}`);
        } catch (e) {
          if (!(e instanceof Deno.errors.NotFound)) throw e;
        }
      }
    }
    await options.extra?.(tmp);
    await replaceDirectory(tmp, outDir, options.afterRetiringOld);
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
}

/** A parameter's chunks as one raw tensor; with `adapters`, its LoRA term folded in. */
async function joinChunks(
  p: Parameter,
  parts: RawTensor[],
  adapters: LoraAdapters | null,
): Promise<RawTensor> {
  const adapter = adapters?.byWeight.get(p.name);
  if (p.quant) {
    // dequantized in float64, the adapter added, rounded once to bf16
    const w = dequantizeMatrix(p.quant.packed(parts.map((r) => r.data)));
    const f32: RawTensor = {
      dtype: "F32",
      shape: p.shape,
      data: new Uint8Array(Float32Array.from(w).buffer),
    };
    const merged = adapter ? await mergeAdapter(f32, adapter) : f32;
    const values = toFloat32(merged);
    const bf16 = Uint16Array.from(values, f32ToBf16);
    return { dtype: "BF16", shape: p.shape, data: new Uint8Array(bf16.buffer) };
  }
  let data = parts[0].data;
  if (parts.length > 1) {
    data = new Uint8Array(parts.reduce((s, r) => s + r.data.byteLength, 0));
    let at = 0;
    for (const r of parts) {
      data.set(r.data, at);
      at += r.data.byteLength;
    }
  }
  const raw: RawTensor = { dtype: parts[0].dtype, shape: p.shape, data };
  // W + (alpha / r)·B·A, in W's own dtype
  return adapter ? await mergeAdapter(raw, adapter) : raw;
}

/** W + scale·B·A for a raw weight (out, in) in its dtype, computed in float64 on the CPU. */
async function mergeAdapter(w: RawTensor, a: Adapter): Promise<RawTensor> {
  const [out, inF] = w.shape;
  const values = toFloat32(w);
  const A = await a.A.toArray(); // (r, in)
  const B = await a.B.toArray(); // (out, r)
  const r = a.A.shape[0];
  const merged = new Float32Array(out * inF);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inF; i++) {
      let d = 0;
      for (let k = 0; k < r; k++) d += B[o * r + k] * A[k * inF + i];
      merged[o * inF + i] = values[o * inF + i] + a.scale * d;
    }
  }
  if (w.dtype === "F32") return { ...w, data: new Uint8Array(merged.buffer) };
  const half = new Uint16Array(merged.length);
  for (let i = 0; i < merged.length; i++) {
    half[i] = w.dtype === "BF16" ? f32ToBf16(merged[i]) : f32ToF16(merged[i]);
  }
  return { ...w, data: new Uint8Array(half.buffer) };
}
