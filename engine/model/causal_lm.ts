/**
 * What generation, training, evaluation and serving need of a model: the
 * CausalLM interface every decoder implements, its parameters and options.
 * @module
 */
import { DTYPE_BYTES, type Tensor } from "../tensor.ts";
import type { DecoderConfig } from "./config.ts";
import type { KeyValueCache, KVCache } from "./kv_cache.ts";
import type { LoraAdapters } from "./lora.ts";
import type { QuantizedWeight } from "../quant/weight.ts";
import type { QwenTokenizer } from "./tokenizer.ts";

/** A named parameter; tables too large for one binding are split into row chunks. */
export interface Parameter {
  name: string;
  shape: number[];
  /** Its GPU tensors (a quantized matrix's codes and scales). */
  chunks: Tensor[];
  /** A frozen quantized matrix (engine/quant), whose tensors `chunks` lists. */
  quant?: QuantizedWeight;
}

/** Options of CausalLM.forward. */
export interface ForwardOptions {
  /** (B, S) 1 for real tokens, 0 for padding; S = cached + new tokens. Default: all ones. */
  attentionMask?: ArrayLike<number>;
  /** (B, T) positions of the new tokens. Default: cumsum(mask) - 1, clamped at 0. */
  positionIds?: ArrayLike<number>;
  /** Keys and values of earlier tokens; the new ones are appended. */
  cache?: KeyValueCache;
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

/** A decoder-only causal LM. */
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
  /** Attaches LoRA adapters (or detaches them with null); the base weights stay as they are. */
  setAdapters(adapters: LoraAdapters | null): void;
  /** The base under the adapters: the same weights, run without the LoRA terms. */
  base(): CausalLM;
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
  createCache(
    batch: number,
    maxLength: number,
    options?: { batchInvariant?: boolean },
  ): KVCache;
  dispose(): void;
}

/** Bytes a model's parameters occupy on the GPU. */
export function parameterBytes(model: CausalLM): number {
  return model.tensors().reduce((s, t) => s + t.size * DTYPE_BYTES[t.dtype], 0);
}
