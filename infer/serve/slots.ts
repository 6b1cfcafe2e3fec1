/**
 * The server's KV cache: `capacity` slots of up to `maxLength` tokens, one
 * per running sequence, each at its own length. A decoding step runs the
 * first `rows` slots (the highest one in use and those below it) with one
 * new token each, written at each row's own position; rows that are not in
 * the step (free slots, another adapter's group) write nothing and attend to
 * nothing. A joining sequence is prefilled on its own small cache and its
 * keys and values copied into its slot, so its numbers are what it would get
 * alone. Attention kernels are picked without regard to the batch, so a
 * row's results never depend on what else is running.
 * @module
 */
import { device } from "../../engine/device.ts";
import type { DecoderConfig } from "../../engine/model/config.ts";
import type { KeyValueCache, KVCache } from "../../engine/model/kv_cache.ts";
import { ropeCacheWriteRows } from "../../engine/ops/mod.ts";
import { keep } from "../../engine/scope.ts";
import { Tensor } from "../../engine/tensor.ts";

export class SlotCache implements KeyValueCache {
  readonly capacity: number;
  readonly maxLength: number;
  readonly batchInvariant = true;
  /** Tokens cached per slot. */
  readonly lengths: number[];
  readonly #keys: Tensor[]; // (capacity, Hkv, maxLength, D) per layer
  readonly #values: Tensor[];
  readonly #kvHeads: number;
  readonly #headDim: number;
  /** The step's rows (a prefix of the slots), their views and write positions. */
  #rows = 0;
  #views: { keys: Tensor[]; values: Tensor[] } = { keys: [], values: [] };
  #positions: Tensor | null = null;
  #past = 0;

  constructor(config: DecoderConfig, capacity: number, maxLength: number) {
    this.capacity = capacity;
    this.maxLength = maxLength;
    this.#kvHeads = config.numKvHeads;
    this.#headDim = config.headDim;
    const shape = [capacity, config.numKvHeads, maxLength, config.headDim];
    this.#keys = Array.from({ length: config.numLayers }, () => keep(Tensor.empty(shape)));
    this.#values = Array.from({ length: config.numLayers }, () => keep(Tensor.empty(shape)));
    this.lengths = new Array(capacity).fill(0);
  }

  /** GPU bytes the cache holds. */
  get bytes(): number {
    return [...this.#keys, ...this.#values].reduce((n, t) => n + t.byteLength, 0);
  }

  get batch(): number {
    return this.#rows;
  }

  get keys(): Tensor[] {
    return this.#views.keys;
  }

  get values(): Tensor[] {
    return this.#views.values;
  }

  /** Keys the step's rows may attend before its new token: the longest of them. */
  get length(): number {
    return this.#past;
  }

  set length(_: number) {
    // lengths advance per slot (advance()), not by the forward
  }

  /**
   * Sets up a decoding step over slots [0, rows): `take[r]` says whether slot
   * r decodes in it. Returns the (rows, S) key mask and (rows) positions the
   * forward needs (S = the longest length + 1).
   */
  beginStep(rows: number, take: boolean[]): { mask: number[]; positions: number[]; S: number } {
    if (rows !== this.#rows) {
      this.#dropViews();
      const shape = [rows, this.#kvHeads, this.maxLength, this.#headDim];
      this.#views = {
        keys: this.#keys.map((t) => keep(t.prefix(shape))),
        values: this.#values.map((t) => keep(t.prefix(shape))),
      };
      this.#rows = rows;
    }
    const lengths = this.lengths.slice(0, rows);
    this.#past = Math.max(0, ...lengths.filter((_, r) => take[r]));
    const S = this.#past + 1;
    if (S > this.maxLength) throw new Error(`SlotCache: ${S} tokens exceed its ${this.maxLength}`);
    this.#positions?.dispose();
    this.#positions = keep(
      Tensor.from(lengths.map((n, r) => (take[r] ? n : -1)), [rows], { dtype: "i32" }),
    );
    const mask: number[] = [];
    for (let r = 0; r < rows; r++) {
      for (let s = 0; s < S; s++) mask.push(take[r] && s <= lengths[r] ? 1 : 0);
    }
    return { mask, positions: lengths.map((n) => (n < this.maxLength ? n : 0)), S };
  }

  write(): void {
    throw new Error("SlotCache: training does not run on a server cache");
  }

  writeRotated(layer: number, q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor): Tensor {
    return ropeCacheWriteRows(q, k, v, cos, sin, {
      keys: this.#views.keys[layer],
      values: this.#views.values[layer],
      positions: this.#positions!,
    });
  }

  /**
   * Copies row `row` of a prefill cache (its first `length` tokens) into
   * `slot`, which then holds that many tokens.
   */
  fill(slot: number, from: KVCache, row: number, length: number): void {
    const D = this.#headDim;
    const dev = device();
    for (let layer = 0; layer < this.#keys.length; layer++) {
      for (const [src, dst] of [[from.keys, this.#keys], [from.values, this.#values]] as const) {
        for (let h = 0; h < this.#kvHeads; h++) {
          const srcAt = ((row * this.#kvHeads + h) * from.maxLength) * D * 4;
          const dstAt = ((slot * this.#kvHeads + h) * this.maxLength) * D * 4;
          dev.copy(src[layer].buffer, srcAt, dst[layer].buffer, dstAt, length * D * 4);
        }
      }
    }
    this.lengths[slot] = length;
  }

  #dropViews(): void {
    [...this.#views.keys, ...this.#views.values].forEach((t) => t.dispose());
    this.#views = { keys: [], values: [] };
  }

  dispose(): void {
    this.#dropViews();
    this.#positions?.dispose();
    [...this.#keys, ...this.#values].forEach((t) => t.dispose());
  }
}
