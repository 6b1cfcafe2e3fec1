/**
 * The generic decoder-only transformer every supported family maps onto:
 * token embedding, layers of RMSNorm -> GQA attention (optional q/k/v biases
 * and per-head q/k RMSNorm, RoPE) -> residual -> RMSNorm -> gated SiLU MLP ->
 * residual, a final RMSNorm and a tied or untied head. Weights too large for
 * one storage binding are row chunks.
 *
 * A layer runs one of two ways: `tapedLayer` (training: plain ops, each with
 * its backward) or `fusedLayer` (inference, no tape: the q/k/v projections
 * in one dispatch, rope with the KV cache write, each residual add with the
 * norm after it, the gated MLP's projections with silu·mul). Both give the same
 * bits (tested), so decoding matches the taped forward.
 * @module
 */
import { checkpoint } from "../autograd.ts";
import { device } from "../device.ts";
import { linear, rmsNorm, ropeTables } from "../nn.ts";
import {
  add,
  addRmsNorm,
  attention,
  concat,
  embedding,
  matmul,
  permute,
  reshape,
  rope,
  siluMul,
  slice,
} from "../ops/mod.ts";
import { linearQkv, linearSiluMul } from "../ops/matmul.ts";
import { quantLinear } from "../ops/quant_matmul.ts";
import { QuantizedWeight } from "../quant/weight.ts";
import { gradEnabled } from "../scope.ts";
import { Tensor } from "../tensor.ts";
import type { CausalLM, ForwardOptions, GenerationDefaults, Parameter } from "./causal_lm.ts";
import type { DecoderConfig, LinearName } from "./config.ts";
import { type KeyValueCache, KVCache } from "./kv_cache.ts";
import type { LoraAdapters } from "./lora.ts";
import { withLora } from "./lora_term.ts";
import type { QwenTokenizer } from "./tokenizer.ts";

/**
 * A linear's weight (out, in): row chunks (output features) that each fit a
 * binding, or a frozen quantized matrix.
 */
type Weight = Tensor[] | QuantizedWeight;

/** One layer's weights, with the checkpoint names of its linear layers (for LoRA). */
interface Layer extends Record<LinearName, Weight> {
  inputNorm: Tensor;
  postNorm: Tensor;
  qBias: Tensor | null;
  kBias: Tensor | null;
  vBias: Tensor | null;
  qNorm: Tensor | null;
  kNorm: Tensor | null;
  names: Record<LinearName, string>;
}

/** Every weight tensor of a layer. */
function layerTensors(L: Layer): Tensor[] {
  const { names: _, ...weights } = L;
  return Object.values(weights).flatMap((v) =>
    v === null ? [] : v instanceof QuantizedWeight ? v.tensors() : Array.isArray(v) ? v : [v]
  );
}

/** A weight kept whole in one float tensor (the fused kernels' operand), or null. */
function whole(w: Weight): Tensor | null {
  return Array.isArray(w) && w.length === 1 ? w[0] : null;
}

/** x·Wᵀ + b with W split by output rows (the chunks' outputs concatenated) or quantized. */
function chunkedLinear(x: Tensor, w: Weight, bias: Tensor | null = null): Tensor {
  if (w instanceof QuantizedWeight) return quantLinear(x, w, bias);
  if (w.length === 1) return linear(x, w[0], bias);
  const y = concat(w.map((part) => matmul(x, part, { transB: true })), -1);
  return bias ? add(y, bias) : y;
}

/** What every layer of one forward shares: shapes, rope tables, masks, cache, adapters. */
interface Step {
  c: DecoderConfig;
  B: number;
  T: number;
  /** Cached + new tokens. */
  S: number;
  cos: Tensor;
  sin: Tensor;
  /** (B, S): 0 for padding keys. */
  keyMask: Tensor;
  cache: KeyValueCache | undefined;
  adapters: LoraAdapters | null;
}

/** x·Wᵀ + b of layer L's linear `name`, plus the LoRA term where an adapter is attached. */
function project(s: Step, L: Layer, name: LinearName, x: Tensor, bias: Tensor | null = null) {
  return withLora(chunkedLinear(x, L[name], bias), x, s.adapters?.byWeight.get(L.names[name]));
}

/** (B, T, n·D) -> (B, n, T, D), with the per-head q/k norm when the family has one. */
function heads(s: Step, x: Tensor, n: number, norm: Tensor | null): Tensor {
  let h = reshape(x, [s.B, s.T, n, s.c.headDim]);
  if (norm) h = rmsNorm(h, norm, s.c.rmsNormEps);
  return permute(h, [0, 2, 1, 3]);
}

/** Attention of rotated q over k and v (or the cache), then the o projection: (B, T, C). */
function attend(s: Step, L: Layer, i: number, q: Tensor, k: Tensor | null, v: Tensor): Tensor {
  const scale = 1 / Math.sqrt(s.c.headDim);
  // fused: causal and padding masked, GQA and the cache read in place, O(T) memory
  const attended = s.cache
    ? attention(q, s.cache.keys[i], s.cache.values[i], {
      scale,
      keyMask: s.keyMask,
      keys: s.S,
      batchInvariant: s.cache.batchInvariant,
    })
    : attention(q, k!, v, { scale, keyMask: s.keyMask });
  const a = permute(attended, [0, 2, 1, 3]); // (B, T, H, D)
  return project(s, L, "o", reshape(a, [s.B, s.T, s.c.numHeads * s.c.headDim]));
}

/** Training's layer: plain ops, each with its backward. x (B, T, C) -> (B, T, C). */
function tapedLayer(s: Step, L: Layer, i: number, x: Tensor): Tensor {
  const { c } = s;
  const h = rmsNorm(x, L.inputNorm, c.rmsNormEps);
  const qLin = project(s, L, "q", h, L.qBias);
  const kLin = project(s, L, "k", h, L.kBias);
  const v = heads(s, project(s, L, "v", h, L.vBias), c.numKvHeads, null);
  const q = rope(heads(s, qLin, c.numHeads, L.qNorm), s.cos, s.sin);
  const k = rope(heads(s, kLin, c.numKvHeads, L.kNorm), s.cos, s.sin);
  s.cache?.write(i, k, v);
  const x1 = add(x, attend(s, L, i, q, k, v));
  const mlpIn = rmsNorm(x1, L.postNorm, c.rmsNormEps);
  const gated = siluMul(project(s, L, "gate", mlpIn), project(s, L, "up", mlpIn));
  return add(x1, project(s, L, "down", gated));
}

/**
 * Inference's layer (no tape): maps the residual stream x and its normalised
 * input h to the next pair, h' being `nextNorm` applied after the closing
 * residual add. The same bits as tapedLayer.
 */
function fusedLayer(
  s: Step,
  L: Layer,
  i: number,
  x: Tensor,
  h: Tensor,
  nextNorm: Tensor,
): [Tensor, Tensor] {
  const { c } = s;
  // one GEMV dispatch serves weights kept whole and without an adapter
  const single = (name: LinearName) =>
    whole(L[name]) !== null && !s.adapters?.byWeight.has(L.names[name]);
  const biases = [L.qBias, L.kBias, L.vBias];
  const qkvFusable = single("q") && single("k") && single("v") &&
    (biases.every((b) => b) || biases.every((b) => !b));
  const [qLin, kLin, vLin] = (qkvFusable &&
    linearQkv(
      h,
      [whole(L.q)!, whole(L.k)!, whole(L.v)!],
      L.qBias ? biases as [Tensor, Tensor, Tensor] : null,
    )) ||
    [
      project(s, L, "q", h, L.qBias),
      project(s, L, "k", h, L.kBias),
      project(s, L, "v", h, L.vBias),
    ];
  const v = heads(s, vLin, c.numKvHeads, null);
  const qHeads = heads(s, qLin, c.numHeads, L.qNorm);
  const kHeads = heads(s, kLin, c.numKvHeads, L.kNorm);
  // decoding: rope on q and k and the cache write in one dispatch
  const attn = s.cache
    ? attend(s, L, i, s.cache.writeRotated(i, qHeads, kHeads, v, s.cos, s.sin), null, v)
    : attend(s, L, i, rope(qHeads, s.cos, s.sin), rope(kHeads, s.cos, s.sin), v);
  const [x1, mlpIn] = addRmsNorm(x, attn, L.postNorm, c.rmsNormEps);
  const gated =
    (single("gate") && single("up") ? linearSiluMul(mlpIn, whole(L.gate)!, whole(L.up)!) : null) ??
      siluMul(project(s, L, "gate", mlpIn), project(s, L, "up", mlpIn));
  return addRmsNorm(x1, project(s, L, "down", gated), nextNorm, c.rmsNormEps);
}

/** The generic decoder. A family (qwen.ts) maps its config and tensor names onto it. */
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
    const linearOf = (name: string) => this.#byName.get(name)?.quant ?? all(name);
    const maybe = (name: string | null) => (name && this.#byName.has(name) ? one(name) : null);
    this.#layers = Array.from({ length: config.numLayers }, (_, i) => {
      const n = config.names.layer(i);
      return {
        inputNorm: one(n.inputNorm),
        postNorm: one(n.postNorm),
        q: linearOf(n.q),
        k: linearOf(n.k),
        v: linearOf(n.v),
        o: linearOf(n.o),
        qBias: maybe(n.qBias),
        kBias: maybe(n.kBias),
        vBias: maybe(n.vBias),
        qNorm: maybe(n.qNorm),
        kNorm: maybe(n.kNorm),
        gate: linearOf(n.gate),
        up: linearOf(n.up),
        down: linearOf(n.down),
        names: { q: n.q, k: n.k, v: n.v, o: n.o, gate: n.gate, up: n.up, down: n.down },
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

  setAdapters(adapters: LoraAdapters | null): void {
    if (adapters) {
      for (const name of adapters.byWeight.keys()) {
        if (!this.#byName.has(name)) throw new Error(`LoRA: the model has no weight ${name}`);
      }
    }
    this.#adapters = adapters;
  }

  /** The base under the adapters (EM-RL's reference with LoRA: no second copy). */
  base(): CausalLM {
    const base: CausalLM = {
      config: this.config,
      parameters: this.parameters,
      tokenizer: this.tokenizer,
      generation: this.generation,
      sourceDir: this.sourceDir,
      adapters: null,
      setAdapters: () => {
        throw new Error("base(): a view of another model's weights takes no adapters");
      },
      base: () => base,
      parameter: (name) => this.parameter(name),
      tensors: () => this.tensors(),
      trainable: () => [],
      forward: (ids, o = {}) => this.forward(ids, { ...o, adapters: false }),
      hidden: (ids, o = {}) => this.hidden(ids, { ...o, adapters: false }),
      headAt: (h, p, each, r) => this.headAt(h, p, each, r),
      head: (x) => this.head(x),
      createCache: (b, m, o) => this.createCache(b, m, o),
      dispose: () => {}, // the weights belong to the adapted model
    };
    return base;
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
    const step: Step = {
      c,
      B,
      T,
      S,
      ...ropeTables(positions, B, T, c.headDim, c.ropeTheta),
      keyMask: Tensor.from(mask, [B, S]),
      cache,
      adapters: options.adapters === false ? null : this.#adapters,
    };
    const finalNorm = this.#byName.get(c.names.finalNorm)!.chunks[0];
    const x0 = this.embed(ids); // (B, T, C)
    let out: Tensor;
    if (!gradEnabled()) {
      let x = x0;
      let h = this.#layers.length ? rmsNorm(x, this.#layers[0].inputNorm, c.rmsNormEps) : x;
      this.#layers.forEach((L, i) => {
        [x, h] = fusedLayer(step, L, i, x, h, this.#layers[i + 1]?.inputNorm ?? finalNorm);
      });
      out = this.#layers.length ? h : rmsNorm(x, finalNorm, c.rmsNormEps);
    } else {
      // --recompute: keep only each layer's input; backward recomputes the layer
      const recompute = options.recompute && !cache;
      const extra = step.adapters?.tensors() ?? [];
      const x = this.#layers.reduce(
        (x, L, i) =>
          recompute
            ? checkpoint((x) => tapedLayer(step, L, i, x), x, [...layerTensors(L), ...extra])
            : tapedLayer(step, L, i, x),
        x0,
      );
      out = rmsNorm(x, finalNorm, c.rmsNormEps);
    }
    if (cache) cache.length = S;
    return out;
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
  createCache(
    batch: number,
    maxLength: number,
    options: { batchInvariant?: boolean } = {},
  ): KVCache {
    return new KVCache(this.config, batch, maxLength, options);
  }

  /** Releases the weights and any attached adapters. */
  dispose(): void {
    this.tensors().forEach((t) => t.dispose());
    this.#adapters?.dispose();
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
