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

export class KVCache {
  readonly batch: number;
  readonly maxLength: number;
  /** Tokens cached so far (the forward advances it). */
  length = 0;
  /** Per layer, (B, Hkv, maxLength, D). */
  readonly keys: Tensor[];
  readonly values: Tensor[];

  constructor(
    config: Pick<DecoderConfig, "numLayers" | "numKvHeads" | "headDim">,
    batch: number,
    maxLength: number,
  ) {
    this.batch = batch;
    this.maxLength = maxLength;
    const shape = [batch, config.numKvHeads, maxLength, config.headDim];
    this.keys = Array.from({ length: config.numLayers }, () => keep(Tensor.empty(shape)));
    this.values = Array.from({ length: config.numLayers }, () => keep(Tensor.empty(shape)));
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
