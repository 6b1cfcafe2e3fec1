/**
 * Per-layer keys and values kept on the GPU for incremental decoding. The
 * writes are ops (engine/ops/kv_cache.ts); the cache only holds the tensors
 * and how many tokens they hold so far.
 * @module
 */
import { cacheWrite, ropeCacheWrite } from "../ops/kv_cache.ts";
import { keep } from "../scope.ts";
import { Tensor } from "../tensor.ts";
import type { DecoderConfig } from "./config.ts";

/** What the decoder needs of a cache: per-layer keys and values, and how to append to them. */
export interface KeyValueCache {
  readonly batch: number;
  readonly maxLength: number;
  /** Keys every row may attend so far (the forward attends length + T and then sets it). */
  length: number;
  /** Per layer, (B, Hkv, maxLength, D). */
  readonly keys: Tensor[];
  readonly values: Tensor[];
  /**
   * Pick attention kernels by rows per KV head only, never by the batch size,
   * so a row's results do not depend on what else is in the batch (a server's).
   */
  readonly batchInvariant?: boolean;
  /** Writes k, v (B, Hkv, T, D) of `layer` (taped path). */
  write(layer: number, k: Tensor, v: Tensor): void;
  /** Rotates q and k, writes k and v; returns q rotated (inference path). */
  writeRotated(layer: number, q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor): Tensor;
}

/** The cache generate() uses: every row at the same length. */
export class KVCache implements KeyValueCache {
  readonly batch: number;
  readonly maxLength: number;
  /** Tokens cached so far (the forward advances it). */
  length = 0;
  /** Per layer, (B, Hkv, maxLength, D). */
  readonly keys: Tensor[];
  readonly values: Tensor[];
  readonly batchInvariant: boolean;

  constructor(
    config: Pick<DecoderConfig, "numLayers" | "numKvHeads" | "headDim">,
    batch: number,
    maxLength: number,
    options: { batchInvariant?: boolean } = {},
  ) {
    this.batch = batch;
    this.batchInvariant = options.batchInvariant === true;
    this.maxLength = maxLength;
    const shape = [batch, config.numKvHeads, maxLength, config.headDim];
    // the largest buffers of decoding, for the whole generation: sized exactly
    const layer = () => keep(Tensor.empty(shape, "f32", { exact: true }));
    this.keys = Array.from({ length: config.numLayers }, layer);
    this.values = Array.from({ length: config.numLayers }, layer);
  }

  /** Writes k, v (B, Hkv, T, D) of `layer` at the current length. */
  write(layer: number, k: Tensor, v: Tensor): void {
    cacheWrite(k, v, this.keys[layer], this.values[layer], this.length);
  }

  /**
   * Decoding's rope and write in one dispatch: returns q (B, H, T, D)
   * rotated; rotates k and writes it and v at the current length.
   */
  writeRotated(layer: number, q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor): Tensor {
    return ropeCacheWrite(q, k, v, cos, sin, {
      keys: this.keys[layer],
      values: this.values[layer],
      at: this.length,
    });
  }

  dispose(): void {
    [...this.keys, ...this.values].forEach((t) => t.dispose());
  }
}
