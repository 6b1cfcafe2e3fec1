/**
 * Qwen2 / Qwen2.5 / Qwen3 causal LM on the engine: Hugging Face checkpoint
 * loading (f32/bf16/f16, sharded, tables past the binding limit split into row
 * chunks), the forward pass with an optional KV cache, and saving back to an
 * HF-format directory.
 * @module
 */
import { recoverDirectory, replaceDirectory, tempDirectoryBeside } from "../atomic.ts";
import { device, initDevice } from "../device.ts";
import { applyRope, attention, attentionBias, linear, rmsNorm, ropeTables } from "../nn.ts";
import {
  add,
  cast,
  concat,
  embedding,
  fill,
  matmul,
  mul,
  nonFiniteCounts,
  permute,
  randomNormal,
  reshape,
  silu,
  slice,
  stridedCopy,
} from "../ops/mod.ts";
import {
  atomicWrite,
  Checkpoint,
  type RawTensor,
  tensorFromRaw,
  tensorToRaw,
  writeSafetensors,
} from "../safetensors.ts";
import { keep } from "../scope.ts";
import { DTYPE_BYTES, numel, Tensor } from "../tensor.ts";
import { type QwenConfig, readQwenConfig } from "./config.ts";
import { loadTokenizer, type QwenTokenizer } from "./tokenizer.ts";

/** A named parameter; tables too large for one binding are split into row chunks. */
export interface Parameter {
  name: string;
  shape: number[];
  chunks: Tensor[];
}

/** Options of loadModel. */
export interface LoadOptions {
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

/** Options of QwenModel.forward. */
export interface ForwardOptions {
  /** (B, S) 1 for real tokens, 0 for padding; S = cached + new tokens. Default: all ones. */
  attentionMask?: ArrayLike<number>;
  /** (B, T) positions of the new tokens. Default: cumsum(mask) - 1, clamped at 0. */
  positionIds?: ArrayLike<number>;
  /** Keys and values of earlier tokens; the new ones are appended. */
  cache?: KVCache;
}

/** Per-layer keys and values kept on the GPU for incremental decoding. */
export class KVCache {
  readonly batch: number;
  readonly maxLength: number;
  /** Tokens cached so far. */
  length = 0;
  readonly keys: Tensor[];
  readonly values: Tensor[];
  readonly #shape: number[];

  constructor(config: QwenConfig, batch: number, maxLength: number) {
    this.batch = batch;
    this.maxLength = maxLength;
    this.#shape = [batch, config.numKvHeads, maxLength, config.headDim];
    this.keys = Array.from({ length: config.numLayers }, () => keep(Tensor.empty(this.#shape)));
    this.values = Array.from({ length: config.numLayers }, () => keep(Tensor.empty(this.#shape)));
  }

  /** Writes k, v (B, Hkv, T, D) at the current length; returns all cached (B, Hkv, length+T, D). */
  append(layer: number, k: Tensor, v: Tensor): [Tensor, Tensor] {
    const [B, Hkv, T, D] = k.shape;
    const S = this.length + T;
    if (S > this.maxLength) throw new Error(`KVCache: ${S} tokens exceed its ${this.maxLength}`);
    const strides = [Hkv * this.maxLength * D, this.maxLength * D, D, 1];
    const src = [Hkv * T * D, T * D, D, 1];
    stridedCopy(k, 0, src, this.keys[layer], this.length * D, strides, [B, Hkv, T, D]);
    stridedCopy(v, 0, src, this.values[layer], this.length * D, strides, [B, Hkv, T, D]);
    return [slice(this.keys[layer], 2, 0, S), slice(this.values[layer], 2, 0, S)];
  }

  dispose(): void {
    [...this.keys, ...this.values].forEach((t) => t.dispose());
  }
}

/** A weight (out, in) as row chunks (output features) that each fit a binding. */
type Chunked = Tensor[];

interface Layer {
  inputNorm: Tensor;
  postNorm: Tensor;
  q: Chunked;
  k: Chunked;
  v: Chunked;
  o: Chunked;
  qBias: Tensor | null;
  kBias: Tensor | null;
  vBias: Tensor | null;
  qNorm: Tensor | null;
  kNorm: Tensor | null;
  gate: Chunked;
  up: Chunked;
  down: Chunked;
}

/** x·Wᵀ + b with W split by output rows: the chunks' outputs are concatenated. */
function chunkedLinear(x: Tensor, w: Chunked, bias: Tensor | null = null): Tensor {
  if (w.length === 1) return linear(x, w[0], bias);
  const y = concat(w.map((part) => matmul(x, part, { transB: true })), -1);
  return bias ? add(y, bias) : y;
}

/** Hugging Face parameter names and shapes a config implies, in checkpoint order. */
export function expectedParameters(c: QwenConfig): [string, number[]][] {
  const out: [string, number[]][] = [["model.embed_tokens.weight", [c.vocabSize, c.hiddenSize]]];
  const qDim = c.numHeads * c.headDim;
  const kvDim = c.numKvHeads * c.headDim;
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    out.push([`${p}.input_layernorm.weight`, [c.hiddenSize]]);
    out.push([`${p}.self_attn.q_proj.weight`, [qDim, c.hiddenSize]]);
    out.push([`${p}.self_attn.k_proj.weight`, [kvDim, c.hiddenSize]]);
    out.push([`${p}.self_attn.v_proj.weight`, [kvDim, c.hiddenSize]]);
    if (c.attentionBias) {
      out.push([`${p}.self_attn.q_proj.bias`, [qDim]]);
      out.push([`${p}.self_attn.k_proj.bias`, [kvDim]]);
      out.push([`${p}.self_attn.v_proj.bias`, [kvDim]]);
    }
    if (c.qkNorm) {
      out.push([`${p}.self_attn.q_norm.weight`, [c.headDim]]);
      out.push([`${p}.self_attn.k_norm.weight`, [c.headDim]]);
    }
    out.push([`${p}.self_attn.o_proj.weight`, [c.hiddenSize, qDim]]);
    out.push([`${p}.post_attention_layernorm.weight`, [c.hiddenSize]]);
    out.push([`${p}.mlp.gate_proj.weight`, [c.intermediateSize, c.hiddenSize]]);
    out.push([`${p}.mlp.up_proj.weight`, [c.intermediateSize, c.hiddenSize]]);
    out.push([`${p}.mlp.down_proj.weight`, [c.hiddenSize, c.intermediateSize]]);
  }
  out.push(["model.norm.weight", [c.hiddenSize]]);
  if (!c.tieWordEmbeddings) out.push(["lm_head.weight", [c.vocabSize, c.hiddenSize]]);
  return out;
}

/** Generation defaults read from generation_config.json. */
export interface GenerationDefaults {
  eosTokenIds: number[];
  padTokenId: number | null;
  temperature?: number;
  topP?: number;
  topK?: number;
}

export class QwenModel {
  readonly config: QwenConfig;
  readonly parameters: Parameter[];
  readonly tokenizer: QwenTokenizer | null;
  readonly generation: GenerationDefaults;
  /** The checkpoint directory it was loaded from (never written to). */
  readonly sourceDir: string | null;
  #byName: Map<string, Parameter>;
  #layers: Layer[];

  constructor(
    config: QwenConfig,
    parameters: Parameter[],
    options: {
      tokenizer?: QwenTokenizer | null;
      generation?: GenerationDefaults;
      sourceDir?: string | null;
    } = {},
  ) {
    this.config = config;
    this.parameters = parameters;
    this.tokenizer = options.tokenizer ?? null;
    this.sourceDir = options.sourceDir ?? null;
    this.generation = options.generation ??
      { eosTokenIds: config.eosTokenIds, padTokenId: config.padTokenId };
    this.#byName = new Map(parameters.map((p) => [p.name, p]));
    const all = (name: string) => {
      const p = this.#byName.get(name);
      if (!p) throw new Error(`model: missing parameter ${name}`);
      return p.chunks;
    };
    const one = (name: string) => all(name)[0];
    const maybe = (name: string) => (this.#byName.has(name) ? one(name) : null);
    this.#layers = Array.from({ length: config.numLayers }, (_, i) => {
      const p = `model.layers.${i}`;
      return {
        inputNorm: one(`${p}.input_layernorm.weight`),
        postNorm: one(`${p}.post_attention_layernorm.weight`),
        q: all(`${p}.self_attn.q_proj.weight`),
        k: all(`${p}.self_attn.k_proj.weight`),
        v: all(`${p}.self_attn.v_proj.weight`),
        o: all(`${p}.self_attn.o_proj.weight`),
        qBias: maybe(`${p}.self_attn.q_proj.bias`),
        kBias: maybe(`${p}.self_attn.k_proj.bias`),
        vBias: maybe(`${p}.self_attn.v_proj.bias`),
        qNorm: maybe(`${p}.self_attn.q_norm.weight`),
        kNorm: maybe(`${p}.self_attn.k_norm.weight`),
        gate: all(`${p}.mlp.gate_proj.weight`),
        up: all(`${p}.mlp.up_proj.weight`),
        down: all(`${p}.mlp.down_proj.weight`),
      };
    });
  }

  /** The parameter named `name` (Hugging Face naming). */
  parameter(name: string): Parameter | undefined {
    return this.#byName.get(name);
  }

  /** Every parameter tensor (chunks flattened), e.g. for an optimizer. */
  tensors(): Tensor[] {
    return this.parameters.flatMap((p) => p.chunks);
  }

  /** Logits (B, T, V) for token ids (B, T) i32. */
  forward(ids: Tensor, options: ForwardOptions = {}): Tensor {
    return this.head(this.hidden(ids, options));
  }

  /** Final normalised hidden states (B, T, C): forward without the lm_head. */
  hidden(ids: Tensor, options: ForwardOptions = {}): Tensor {
    const c = this.config;
    if (ids.dtype !== "i32" || ids.shape.length !== 2) {
      throw new Error(`forward: ids must be (batch, seq) i32, got [${ids.shape}] ${ids.dtype}`);
    }
    const [B, T] = ids.shape;
    const cache = options.cache;
    const past = cache?.length ?? 0;
    const S = past + T;
    if (cache && cache.batch !== B) {
      throw new Error(`forward: cache batch ${cache.batch} != ids batch ${B}`);
    }
    const mask = options.attentionMask ?? new Array(B * S).fill(1);
    if (mask.length !== B * S) {
      throw new Error(
        `forward: attentionMask has ${mask.length} values, expected ${B}x${S} (cached + new tokens)`,
      );
    }
    const positions = options.positionIds ??
      positionsFromMask(mask, B, S).slice(0).filter((_, i) => i % S >= past);
    if (positions.length !== B * T) {
      throw new Error(`forward: positionIds has ${positions.length} values, expected ${B}x${T}`);
    }
    const { cos, sin } = ropeTables(positions, B, T, c.headDim, c.ropeTheta);
    const bias = attentionBias(mask, B, T, S);
    const scale = 1 / Math.sqrt(c.headDim);
    const heads = (x: Tensor, n: number, norm: Tensor | null) => {
      let h = reshape(x, [B, T, n, c.headDim]);
      if (norm) h = rmsNorm(h, norm, c.rmsNormEps);
      return permute(h, [0, 2, 1, 3]); // (B, n, T, D)
    };
    let x = this.embed(ids); // (B, T, C)
    this.#layers.forEach((L, i) => {
      const h = rmsNorm(x, L.inputNorm, c.rmsNormEps);
      const q = applyRope(heads(chunkedLinear(h, L.q, L.qBias), c.numHeads, L.qNorm), cos, sin);
      let k = applyRope(heads(chunkedLinear(h, L.k, L.kBias), c.numKvHeads, L.kNorm), cos, sin);
      let v = heads(chunkedLinear(h, L.v, L.vBias), c.numKvHeads, null);
      if (cache) [k, v] = cache.append(i, k, v);
      const a = permute(attention(q, k, v, bias, scale), [0, 2, 1, 3]); // (B, T, H, D)
      x = add(x, chunkedLinear(reshape(a, [B, T, c.numHeads * c.headDim]), L.o));
      const h2 = rmsNorm(x, L.postNorm, c.rmsNormEps);
      x = add(
        x,
        chunkedLinear(mul(silu(chunkedLinear(h2, L.gate)), chunkedLinear(h2, L.up)), L.down),
      );
    });
    if (cache) cache.length = S;
    return rmsNorm(x, this.#byName.get("model.norm.weight")!.chunks[0], c.rmsNormEps);
  }

  /**
   * Rows of logits (n, V) at the given flat positions of hidden states (B, T, C),
   * in row chunks whose logits fit one storage binding; `each` maps a chunk's
   * logits and its row range to a scalar, and the scalars are summed. Only the
   * positions that are scored pay for the lm_head.
   */
  headAt(
    hidden: Tensor,
    positions: number[],
    each: (logits: Tensor, from: number, to: number) => Tensor,
    rowsPerChunk?: number,
  ): Tensor {
    const C = hidden.shape.at(-1)!;
    const flat = reshape(hidden, [hidden.size / C, C]);
    const rows = embedding(flat, Tensor.from(positions, [positions.length], { dtype: "i32" })); // (n, C)
    const limit = device().info.maxStorageBufferBindingSize;
    const per = Math.max(
      1,
      Math.min(positions.length, rowsPerChunk ?? Math.floor(limit / (4 * this.config.vocabSize))),
    );
    let total: Tensor | null = null;
    for (let r = 0; r < positions.length; r += per) {
      const to = Math.min(positions.length, r + per);
      const part = each(
        this.head(to - r === positions.length ? rows : slice(rows, 0, r, to)),
        r,
        to,
      );
      total = total ? add(total, part) : part;
    }
    return total!;
  }

  /** Token embeddings (..., C); a chunked table is the sum of its chunks' lookups. */
  embed(ids: Tensor): Tensor {
    const p = this.#byName.get("model.embed_tokens.weight")!;
    let offset = 0;
    let out: Tensor | null = null;
    for (const w of p.chunks) {
      const e = embedding(w, ids, offset, this.config.vocabSize);
      out = out ? add(out, e) : e;
      offset += w.shape[0];
    }
    return out!;
  }

  /** Logits from final hidden states (..., C) -> (..., V); vocabulary chunks are concatenated. */
  head(x: Tensor): Tensor {
    const name = this.config.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    return chunkedLinear(x, this.#byName.get(name)!.chunks);
  }

  /** A KV cache for `batch` sequences of up to `maxLength` tokens. */
  createCache(batch: number, maxLength: number): KVCache {
    return new KVCache(this.config, batch, maxLength);
  }

  dispose(): void {
    this.tensors().forEach((t) => t.dispose());
  }
}

/** HF position ids for left padding: cumsum(mask) - 1, clamped at 0. (B*S) */
export function positionsFromMask(mask: ArrayLike<number>, batch: number, seq: number): number[] {
  const out = new Array(batch * seq);
  for (let b = 0; b < batch; b++) {
    let n = 0;
    for (let s = 0; s < seq; s++) {
      n += mask[b * seq + s] ? 1 : 0;
      out[b * seq + s] = Math.max(0, n - 1);
    }
  }
  return out;
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
 * Loads a Hugging Face Qwen2/Qwen2.5/Qwen3 checkpoint directory: config.json,
 * model.safetensors (or shards), and when present tokenizer.json,
 * tokenizer_config.json and generation_config.json.
 */
export async function loadModel(dir: string, options: LoadOptions = {}): Promise<QwenModel> {
  await initDevice();
  // a save interrupted between its renames leaves the directory recoverable
  if (!await exists(dir)) await recoverDirectory(dir);
  const config = await readQwenConfig(dir);
  const toF32 = options.trainable || options.dtype === "f32";
  const ckpt = await Checkpoint.open(dir);
  const parameters: Parameter[] = [];
  try {
    for (const [name, shape] of expectedParameters(config)) {
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
      // vectors (norms, biases) are small: always f32
      const chunks = uploadChunks(raw, name, toF32 || shape.length === 1, options.chunkBytes);
      if (options.trainable) chunks.forEach((t) => t.requiresGrad = true);
      parameters.push({ name, shape, chunks });
    }
    checkUnused(dir, config, ckpt.names, options.warn ?? console.warn);
    if (options.checkFinite !== false) await checkFinite(parameters, ckpt);
  } catch (e) {
    parameters.forEach((p) => p.chunks.forEach((t) => t.dispose()));
    throw e;
  } finally {
    ckpt.close();
  }
  const gen = await readJsonIfPresent(dir, "generation_config.json");
  let tokenizer: QwenTokenizer | null = null;
  try {
    await Deno.stat(`${dir}/tokenizer.json`);
    tokenizer = await loadTokenizer(dir);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const eos = [
    ...new Set([
      ...idList(gen?.eos_token_id),
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
  return new QwenModel(config, parameters, {
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
  config: QwenConfig,
  names: string[],
  warn: (message: string) => void,
): void {
  const used = new Set(expectedParameters(config).map(([n]) => n));
  if (config.tieWordEmbeddings) used.add("lm_head.weight"); // tied: the same tensor
  const unused = names.filter((n) => !used.has(n) && !n.endsWith("rotary_emb.inv_freq"));
  const layer = unused.find((n) => /^model\.layers\.\d+\./.test(n));
  if (layer) {
    const i = Number(layer.split(".")[2]);
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
async function checkFinite(parameters: Parameter[], ckpt: Checkpoint): Promise<void> {
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

function idList(v: unknown): number[] {
  if (v === null || v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).filter(Number.isInteger) as number[];
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
  model: QwenModel,
  outDir: string,
  options: {
    metadata?: Record<string, string>;
    copyFrom?: string | null;
    /** Writes more files into the new directory before it is swapped in (e.g. optimizer state). */
    extra?: (tmpDir: string) => Promise<void>;
    /** Allow replacing the directory the model was loaded from (a trainer's own checkpoint on resume). */
    replaceSource?: boolean;
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
    for (const p of model.parameters) {
      const parts = await Promise.all(p.chunks.map(tensorToRaw));
      const bytes = new Uint8Array(parts.reduce((s, r) => s + r.data.byteLength, 0));
      let at = 0;
      for (const r of parts) {
        bytes.set(r.data, at);
        at += r.data.byteLength;
      }
      if (p.shape.length === 2) dtype = parts[0].dtype;
      tensors.set(p.name, { dtype: parts[0].dtype, shape: p.shape, data: bytes });
    }
    await writeSafetensors(`${tmp}/model.safetensors`, tensors, {
      format: "pt",
      ...options.metadata,
    });
    const config = {
      ...model.config.raw,
      dtype: dtype === "BF16" ? "bfloat16" : dtype === "F16" ? "float16" : "float32",
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

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

function parentOf(path: string): string {
  const i = path.replace(/\/+$/, "").lastIndexOf("/");
  return i <= 0 ? (i === 0 ? "/" : ".") : path.slice(0, i);
}

/** Bytes a model's parameters occupy on the GPU. */
export function parameterBytes(model: QwenModel): number {
  return model.tensors().reduce((s, t) => s + t.size * DTYPE_BYTES[t.dtype], 0);
}

/**
 * A model with random weights (normal, std 0.02; norms 1) for a config, made
 * on the GPU: for tests, benchmarks and scale checks without a download.
 */
export function randomModel(
  config: QwenConfig,
  options: { seed?: number; dtype?: "f32" | "bf16"; std?: number; trainable?: boolean } = {},
): QwenModel {
  const dtype = options.dtype ?? "f32";
  const limit = device().info.maxStorageBufferBindingSize;
  let seed = options.seed ?? 0;
  const parameters: Parameter[] = expectedParameters(config).map(([name, shape]) => {
    if (shape.length === 1) {
      const isNorm = name.endsWith("norm.weight");
      const t = keep(
        isNorm ? fill(shape, 1) : randomNormal(shape, { seed: seed++, std: options.std ?? 0.02 }),
      );
      return { name, shape, chunks: [t] };
    }
    const [rows, cols] = shape;
    const per = Math.max(1, Math.floor(limit / (cols * DTYPE_BYTES[dtype])));
    const chunks: Tensor[] = [];
    for (let r = 0; r < rows; r += per) {
      chunks.push(
        keep(
          randomNormal([Math.min(per, rows - r), cols], {
            seed: seed++,
            std: options.std ?? 0.02,
            dtype,
          }),
        ),
      );
    }
    return { name, shape, chunks };
  });
  if (options.trainable) {
    if (dtype !== "f32") throw new Error("randomModel: trainable models must be f32");
    parameters.forEach((p) => p.chunks.forEach((t) => t.requiresGrad = true));
  }
  return new QwenModel(config, parameters);
}
