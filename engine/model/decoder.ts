/**
 * The generic decoder-only transformer every supported family maps onto:
 * GQA attention with optional q/k/v biases and q/k norms, RoPE, a gated SiLU
 * MLP, tied or untied head; the KV cache; the CausalLM interface that
 * generation, training and evaluation type against; random initialisation.
 * Weights too large for one storage binding are row chunks.
 * @module
 */
import { cacheWriteKernel, ropeCacheWriteKernel } from "../../kernels/attention.ts";
import { checkpoint } from "../autograd.ts";
import { device } from "../device.ts";
import { launch } from "../launch.ts";
import { linear, rmsNorm, ropeTables } from "../nn.ts";
import {
  add,
  addRmsNorm,
  attention,
  concat,
  embedding,
  fill,
  matmul,
  permute,
  randomNormal,
  reshape,
  rope,
  siluMul,
  slice,
} from "../ops/mod.ts";
import { gemvQkv, gemvSiluMul } from "../ops/matmul.ts";
import { gradEnabled, keep } from "../scope.ts";
import { DTYPE_BYTES, Tensor } from "../tensor.ts";
import { type LoraAdapters, withLora } from "./lora.ts";
import type { QwenTokenizer } from "./tokenizer.ts";

/** A config.json problem, naming the file and the field. */
export class ConfigError extends Error {
  constructor(path: string, message: string) {
    super(`${path}: ${message}`);
    this.name = "ConfigError";
  }
}

/** Checkpoint names of one layer's tensors (absent features: null). */
export interface LayerNames {
  inputNorm: string;
  postNorm: string;
  q: string;
  k: string;
  v: string;
  o: string;
  qBias: string | null;
  kBias: string | null;
  vBias: string | null;
  qNorm: string | null;
  kNorm: string | null;
  gate: string;
  up: string;
  down: string;
}

/** How a family names its checkpoint tensors. */
export interface TensorNames {
  embed: string;
  finalNorm: string;
  lmHead: string;
  layer(i: number): LayerNames;
  /** The layer a checkpoint tensor belongs to, or null for a non-layer tensor. */
  layerOf(name: string): number | null;
}

/** The decoder's shape and features, filled in by a family from its config.json. */
export interface DecoderConfig {
  /** The architecture config.json names (e.g. Qwen2ForCausalLM). */
  architecture: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  ropeTheta: number;
  rmsNormEps: number;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections have biases. */
  attentionBias: boolean;
  /** Per-head RMSNorm of q and k before RoPE. */
  qkNorm: boolean;
  eosTokenIds: number[];
  bosTokenId: number | null;
  padTokenId: number | null;
  /** The family's tensor names. */
  names: TensorNames;
  /** The parsed config.json, kept to write it back on save. */
  raw: Record<string, unknown>;
}

/** A named parameter; tables too large for one binding are split into row chunks. */
export interface Parameter {
  name: string;
  shape: number[];
  chunks: Tensor[];
}

/** Options of CausalLM.forward. */
export interface ForwardOptions {
  /** (B, S) 1 for real tokens, 0 for padding; S = cached + new tokens. Default: all ones. */
  attentionMask?: ArrayLike<number>;
  /** (B, T) positions of the new tokens. Default: cumsum(mask) - 1, clamped at 0. */
  positionIds?: ArrayLike<number>;
  /** Keys and values of earlier tokens; the new ones are appended. */
  cache?: KVCache;
  /** Activation recomputation: keep only each layer's input for backward (training). */
  recompute?: boolean;
  /** Apply the LoRA adapters, if any (default true; false runs the base model). */
  adapters?: boolean;
}

/** Generation defaults read from generation_config.json. */
export interface GenerationDefaults {
  eosTokenIds: number[];
  padTokenId: number | null;
  temperature?: number;
  topP?: number;
  topK?: number;
}

/** Token ids of a config field that holds one id, a list of ids, or nothing. */
export function tokenIdList(v: unknown): number[] {
  if (v === null || v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).filter(Number.isInteger) as number[];
}

/** Parameter names and shapes a config implies, in checkpoint order. */
export function decoderParameters(c: DecoderConfig): [string, number[]][] {
  const out: [string, number[]][] = [[c.names.embed, [c.vocabSize, c.hiddenSize]]];
  const qDim = c.numHeads * c.headDim;
  const kvDim = c.numKvHeads * c.headDim;
  for (let i = 0; i < c.numLayers; i++) {
    const n = c.names.layer(i);
    out.push([n.inputNorm, [c.hiddenSize]]);
    out.push([n.q, [qDim, c.hiddenSize]]);
    out.push([n.k, [kvDim, c.hiddenSize]]);
    out.push([n.v, [kvDim, c.hiddenSize]]);
    if (c.attentionBias) {
      out.push([n.qBias!, [qDim]]);
      out.push([n.kBias!, [kvDim]]);
      out.push([n.vBias!, [kvDim]]);
    }
    if (c.qkNorm) {
      out.push([n.qNorm!, [c.headDim]]);
      out.push([n.kNorm!, [c.headDim]]);
    }
    out.push([n.o, [c.hiddenSize, qDim]]);
    out.push([n.postNorm, [c.hiddenSize]]);
    out.push([n.gate, [c.intermediateSize, c.hiddenSize]]);
    out.push([n.up, [c.intermediateSize, c.hiddenSize]]);
    out.push([n.down, [c.hiddenSize, c.intermediateSize]]);
  }
  out.push([c.names.finalNorm, [c.hiddenSize]]);
  if (!c.tieWordEmbeddings) out.push([c.names.lmHead, [c.vocabSize, c.hiddenSize]]);
  return out;
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

  constructor(config: DecoderConfig, batch: number, maxLength: number) {
    this.batch = batch;
    this.maxLength = maxLength;
    this.#shape = [batch, config.numKvHeads, maxLength, config.headDim];
    this.keys = Array.from({ length: config.numLayers }, () => keep(Tensor.empty(this.#shape)));
    this.values = Array.from({ length: config.numLayers }, () => keep(Tensor.empty(this.#shape)));
  }

  /** Writes k, v (B, Hkv, T, D) at the current length (which the forward then advances). */
  write(layer: number, k: Tensor, v: Tensor): void {
    const [B, Hkv, T, D] = k.shape;
    const S = this.length + T;
    if (S > this.maxLength) throw new Error(`KVCache: ${S} tokens exceed its ${this.maxLength}`);
    launch(
      cacheWriteKernel,
      { k, v, keys: this.keys[layer], values: this.values[layer] },
      { n: B * Hkv * T * D, T, D, max_length: this.maxLength, at: this.length },
      B * Hkv * T * D,
    );
  }

  /**
   * Decoding's rope and write in one dispatch: rotates q (B, H, T, D) and
   * returns it, rotates k and writes it and v (B, Hkv, T, D) at the current
   * length. The same bits as rope(q), rope(k), then write.
   */
  writeRotated(layer: number, q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor): Tensor {
    const [B, Hq, T, D] = q.shape;
    const Hkv = k.shape[1];
    const S = this.length + T;
    if (S > this.maxLength) throw new Error(`KVCache: ${S} tokens exceed its ${this.maxLength}`);
    const qOut = Tensor.empty(q.shape);
    launch(
      ropeCacheWriteKernel,
      {
        q,
        k,
        v,
        cosT: cos,
        sinT: sin,
        q_out: qOut,
        keys: this.keys[layer],
        values: this.values[layer],
      },
      {
        nq: q.size,
        nk: k.size,
        Hq,
        Hkv,
        T,
        D,
        max_length: this.maxLength,
        at: this.length,
        sign: 1,
      },
      q.size + B * Hkv * T * D,
    );
    return qOut;
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

/** Every weight tensor of a layer. */
function layerTensors(L: Layer): Tensor[] {
  return Object.values(L).flatMap((v) => (v === null ? [] : Array.isArray(v) ? v : [v]));
}

/** x·Wᵀ + b with W split by output rows: the chunks' outputs are concatenated. */
function chunkedLinear(x: Tensor, w: Chunked, bias: Tensor | null = null): Tensor {
  if (w.length === 1) return linear(x, w[0], bias);
  const y = concat(w.map((part) => matmul(x, part, { transB: true })), -1);
  return bias ? add(y, bias) : y;
}

/** A decoder-only causal LM: what generation, training and evaluation need of a model. */
export interface CausalLM {
  readonly config: DecoderConfig;
  readonly parameters: Parameter[];
  readonly tokenizer: QwenTokenizer | null;
  readonly generation: GenerationDefaults;
  /** The checkpoint directory it was loaded from (never written to), if any. */
  readonly sourceDir: string | null;
  /** The parameter named `name` (checkpoint naming). */
  parameter(name: string): Parameter | undefined;
  /** Every parameter tensor (chunks flattened). */
  tensors(): Tensor[];
  /** What training updates: the LoRA adapters when attached, else every parameter. */
  trainable(): Tensor[];
  /** The LoRA adapters, if attached. */
  readonly adapters: LoraAdapters | null;
  /** Logits (B, T, V) for token ids (B, T) i32. */
  forward(ids: Tensor, options?: ForwardOptions): Tensor;
  /** Final normalised hidden states (B, T, C): forward without the head. */
  hidden(ids: Tensor, options?: ForwardOptions): Tensor;
  /** The sum of `each` over row chunks of the logits at flat `positions` of `hidden`. */
  headAt(
    hidden: Tensor,
    positions: number[],
    each: (logits: Tensor, from: number, to: number) => Tensor,
    rowsPerChunk?: number,
  ): Tensor;
  /** Logits from final hidden states (..., C) -> (..., V). */
  head(x: Tensor): Tensor;
  /** A KV cache for `batch` sequences of up to `maxLength` tokens. */
  createCache(batch: number, maxLength: number): KVCache;
  dispose(): void;
}

/**
 * The generic decoder: token embedding, layers of RMSNorm -> GQA attention
 * (optional q/k/v biases and per-head q/k RMSNorm, RoPE) -> residual ->
 * RMSNorm -> gated SiLU MLP -> residual, a final RMSNorm and a tied or untied
 * head. A family (qwen.ts) maps its config and tensor names onto it.
 */
export class DecoderLM implements CausalLM {
  readonly config: DecoderConfig;
  readonly parameters: Parameter[];
  readonly tokenizer: QwenTokenizer | null;
  readonly generation: GenerationDefaults;
  /** The checkpoint directory it was loaded from (never written to). */
  readonly sourceDir: string | null;
  #byName: Map<string, Parameter>;
  #layers: Layer[];
  #adapters: LoraAdapters | null = null;

  constructor(
    config: DecoderConfig,
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
    const maybe = (name: string | null) => (name && this.#byName.has(name) ? one(name) : null);
    this.#layers = Array.from({ length: config.numLayers }, (_, i) => {
      const n = config.names.layer(i);
      return {
        inputNorm: one(n.inputNorm),
        postNorm: one(n.postNorm),
        q: all(n.q),
        k: all(n.k),
        v: all(n.v),
        o: all(n.o),
        qBias: maybe(n.qBias),
        kBias: maybe(n.kBias),
        vBias: maybe(n.vBias),
        qNorm: maybe(n.qNorm),
        kNorm: maybe(n.kNorm),
        gate: all(n.gate),
        up: all(n.up),
        down: all(n.down),
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

  trainable(): Tensor[] {
    return this.#adapters ? this.#adapters.tensors() : this.tensors();
  }

  get adapters(): LoraAdapters | null {
    return this.#adapters;
  }

  /** Attaches LoRA adapters (or detaches them with null); the base weights are left as they are. */
  setAdapters(adapters: LoraAdapters | null): void {
    if (adapters) {
      for (const name of adapters.byWeight.keys()) {
        if (!this.#byName.has(name)) throw new Error(`LoRA: the model has no weight ${name}`);
      }
    }
    this.#adapters = adapters;
  }

  /**
   * The base model under the adapters: the same weights, forward without the
   * LoRA terms (EM-RL's reference with LoRA: no second copy).
   */
  base(): CausalLM {
    return {
      config: this.config,
      parameters: this.parameters,
      tokenizer: this.tokenizer,
      generation: this.generation,
      sourceDir: this.sourceDir,
      adapters: null,
      parameter: (name) => this.parameter(name),
      tensors: () => this.tensors(),
      trainable: () => [],
      forward: (ids, o = {}) => this.forward(ids, { ...o, adapters: false }),
      hidden: (ids, o = {}) => this.hidden(ids, { ...o, adapters: false }),
      headAt: (h, p, each, r) => this.headAt(h, p, each, r),
      head: (x) => this.head(x),
      createCache: (b, m) => this.createCache(b, m),
      dispose: () => {}, // the weights belong to the adapted model
    };
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
      positionsFromMask(mask, B, S).filter((_, i) => i % S >= past);
    if (positions.length !== B * T) {
      throw new Error(`forward: positionIds has ${positions.length} values, expected ${B}x${T}`);
    }
    const { cos, sin } = ropeTables(positions, B, T, c.headDim, c.ropeTheta);
    const keyMask = Tensor.from(mask, [B, S]); // (B, S): 0 for padding keys
    const scale = 1 / Math.sqrt(c.headDim);
    const heads = (x: Tensor, n: number, norm: Tensor | null) => {
      let h = reshape(x, [B, T, n, c.headDim]);
      if (norm) h = rmsNorm(h, norm, c.rmsNormEps);
      return permute(h, [0, 2, 1, 3]); // (B, n, T, D)
    };
    const adapters = options.adapters === false ? null : this.#adapters;
    const finalNorm = this.#byName.get(c.names.finalNorm)!.chunks[0];
    // Inference (no tape) fuses, each the same bits as the taped path: q/k/v projections in one
    // GEMV, rope with the cache write, each residual add with the norm after it, and the gated
    // MLP's two projections with silu·mul.
    const fused = !gradEnabled();
    // a layer maps the residual stream x and its input norm h (fused path) to the next pair;
    // `nextNorm` is the norm after the layer's closing residual add
    const layer =
      (L: Layer, i: number, nextNorm: Tensor) =>
      (x: Tensor, hIn: Tensor | null): [Tensor, Tensor | null] => {
        const n = c.names.layer(i);
        // x·Wᵀ + b, plus the LoRA term where an adapter is attached
        const lin = (x: Tensor, w: Chunked, bias: Tensor | null, name: string) =>
          withLora(chunkedLinear(x, w, bias), x, adapters?.byWeight.get(name));
        // one GEMV dispatch can serve a weight kept whole and without an adapter
        const single = (w: Chunked, name: string) =>
          w.length === 1 && !adapters?.byWeight.has(name);
        const h = hIn ?? rmsNorm(x, L.inputNorm, c.rmsNormEps);
        const biases = [L.qBias, L.kBias, L.vBias];
        const qkvFusable = fused && single(L.q, n.q) && single(L.k, n.k) && single(L.v, n.v) &&
          (biases.every((b) => b) || biases.every((b) => !b));
        const [qLin, kLin, vLin] = (qkvFusable &&
          gemvQkv(
            h,
            [L.q[0], L.k[0], L.v[0]],
            L.qBias ? biases as [Tensor, Tensor, Tensor] : null,
          )) ||
          [lin(h, L.q, L.qBias, n.q), lin(h, L.k, L.kBias, n.k), lin(h, L.v, L.vBias, n.v)];
        const v = heads(vLin, c.numKvHeads, null);
        let q: Tensor;
        let k: Tensor | null = null; // rotated keys, when not written to the cache by the rope
        if (fused && cache) {
          // decoding: rope on q and k and the cache write in one dispatch
          q = cache.writeRotated(
            i,
            heads(qLin, c.numHeads, L.qNorm),
            heads(kLin, c.numKvHeads, L.kNorm),
            v,
            cos,
            sin,
          );
        } else {
          q = rope(heads(qLin, c.numHeads, L.qNorm), cos, sin);
          k = rope(heads(kLin, c.numKvHeads, L.kNorm), cos, sin);
          cache?.write(i, k, v);
        }
        // fused: causal and padding masked, GQA and the cache read in place, O(T) memory
        const attended = cache
          ? attention(q, cache.keys[i], cache.values[i], { scale, keyMask, keys: S })
          : attention(q, k!, v, { scale, keyMask });
        const a = permute(attended, [0, 2, 1, 3]); // (B, T, H, D)
        const attn = lin(reshape(a, [B, T, c.numHeads * c.headDim]), L.o, null, n.o);
        const [x1, h2] = fused
          ? addRmsNorm(x, attn, L.postNorm, c.rmsNormEps)
          : [add(x, attn), null];
        const mlpIn = h2 ?? rmsNorm(x1, L.postNorm, c.rmsNormEps);
        const gated =
          (fused && single(L.gate, n.gate) && single(L.up, n.up)
            ? gemvSiluMul(mlpIn, L.gate[0], L.up[0])
            : null) ??
            siluMul(lin(mlpIn, L.gate, null, n.gate), lin(mlpIn, L.up, null, n.up));
        const down = lin(gated, L.down, null, n.down);
        return fused ? addRmsNorm(x1, down, nextNorm, c.rmsNormEps) : [add(x1, down), null];
      };
    let x = this.embed(ids); // (B, T, C)
    let h: Tensor | null = fused && this.#layers.length > 0
      ? rmsNorm(x, this.#layers[0].inputNorm, c.rmsNormEps)
      : null;
    this.#layers.forEach((L, i) => {
      const nextNorm = this.#layers[i + 1]?.inputNorm ?? finalNorm;
      // --recompute: keep only each layer's input; backward recomputes the layer
      [x, h] = options.recompute && !cache && !fused
        ? [
          checkpoint(
            (x) => layer(L, i, nextNorm)(x, null)[0],
            x,
            [...layerTensors(L), ...(adapters?.tensors() ?? [])],
          ),
          null,
        ]
        : layer(L, i, nextNorm)(x, h);
    });
    if (cache) cache.length = S;
    return h ?? rmsNorm(x, finalNorm, c.rmsNormEps);
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
    const p = this.#byName.get(this.config.names.embed)!;
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
    const names = this.config.names;
    const name = this.config.tieWordEmbeddings ? names.embed : names.lmHead;
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

/** Bytes a model's parameters occupy on the GPU. */
export function parameterBytes(model: CausalLM): number {
  return model.tensors().reduce((s, t) => s + t.size * DTYPE_BYTES[t.dtype], 0);
}

/**
 * A model with random weights (normal, std 0.02; norms 1) for a config, made
 * on the GPU: for tests, benchmarks and scale checks without a download.
 */
export function randomModel(
  config: DecoderConfig,
  options: { seed?: number; dtype?: "f32" | "bf16"; std?: number; trainable?: boolean } = {},
): DecoderLM {
  const dtype = options.dtype ?? "f32";
  const limit = device().info.maxStorageBufferBindingSize;
  let seed = options.seed ?? 0;
  const parameters: Parameter[] = decoderParameters(config).map(([name, shape]) => {
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
  return new DecoderLM(config, parameters);
}

/**
 * A frozen copy of a model: the same config and tokenizer over copies of every
 * weight, sharing no writable buffer with it (EM-RL's reference model).
 */
export function frozenCopy(model: CausalLM): DecoderLM {
  const parameters = model.parameters.map((p) => ({
    name: p.name,
    shape: p.shape,
    chunks: p.chunks.map((t) => {
      const c = keep(Tensor.empty(t.shape, t.dtype));
      device().copy(t.buffer, 0, c.buffer, 0, t.byteLength);
      return c;
    }),
  }));
  return new DecoderLM(model.config, parameters, {
    tokenizer: model.tokenizer,
    generation: model.generation,
    sourceDir: model.sourceDir,
  });
}
