/**
 * Hugging Face checkpoint directories: loading (config.json through its
 * family, model.safetensors or shards, dtype kept or upcast, weights past the
 * binding limit split into row chunks, checks for NaN/Inf and unused
 * tensors, tokenizer and generation_config.json precedence) and saving
 * (atomic, never over the source).
 * @module
 */
import {
  atomicWriteText,
  recoverDirectory,
  replaceDirectory,
  tempDirectoryBeside,
} from "../atomic.ts";
import { initDevice } from "../device.ts";
import { exists, parentOf } from "../paths.ts";
import { type RawTensor, SafetensorsFile, toFloat32, writeSafetensors } from "../safetensors.ts";
import { f32ToBf16, f32ToF16 } from "../tensor.ts";
import { tensorsToRaw } from "../tensor_io.ts";
import type { CausalLM, Parameter } from "./causal_lm.ts";
import type { DecoderConfig } from "./config.ts";
import { dequantizeMatrix } from "../quant/format.ts";
import { type Adapter, LoraAdapters } from "./lora.ts";
import { configFrom, loadFrom, type LoadOptions, tokenizerFrom } from "./load.ts";
import type { CheckpointSource } from "./source.ts";
import type { QwenTokenizer } from "./tokenizer.ts";

export { type LoadOptions, parseConfig } from "./load.ts";

/** A checkpoint directory as the loader's source. */
export function dirSource(dir: string): CheckpointSource {
  return {
    name: dir,
    async text(file) {
      try {
        return await Deno.readTextFile(`${dir}/${file}`);
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) return null;
        throw e; // the caller names the file
      }
    },
    safetensors: (file) => SafetensorsFile.open(`${dir}/${file}`),
  };
}

/** Loads tokenizer.json and tokenizer_config.json from a model directory. */
export async function loadTokenizer(dir: string): Promise<QwenTokenizer> {
  const tokenizer = await tokenizerFrom(dirSource(dir));
  if (!tokenizer) throw new Error(`${dir}/tokenizer.json: cannot read (not found)`);
  return tokenizer;
}

/** Reads and parses `dir/config.json`. */
export function readConfig(dir: string): Promise<DecoderConfig> {
  return configFrom(dirSource(dir));
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
  return await loadFrom(dirSource(dir), {
    ...options,
    // absent: loadFrom says which file is missing
    sourceDir: await Deno.realPath(dir).catch(() => dir),
  });
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
    await atomicWriteText(`${tmp}/config.json`, JSON.stringify(config, null, 2) + "\n");
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
