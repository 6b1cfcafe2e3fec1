/**
 * Writes into a KV cache (B, Hkv, maxLength, D) at slot `at`: the plain
 * append, and decoding's rope on q and k fused with it (the same bits as
 * rope, rope, then the append). The writes are side effects on the cache and
 * record no tape: no gradient flows into a cache.
 * @module
 */
import {
  cacheWriteKernel,
  ropeCacheWriteKernel,
  ropeCacheWriteRowsKernel,
} from "../../kernels/kv_cache.ts";
import { launch } from "../launch.ts";
import { Tensor } from "../tensor.ts";
import type { NDArray } from "./_reference.ts";
import { normReference } from "./norm.ts";

function checkSlot(op: string, cache: Tensor, k: Tensor, at: number): void {
  const [B, Hkv, T, D] = k.shape;
  const [cb, ch, max, cd] = cache.shape;
  if (k.shape.length !== 4 || cb !== B || ch !== Hkv || cd !== D) {
    throw new Error(`${op}: k [${k.shape}] does not fit the cache [${cache.shape}]`);
  }
  if (at + T > max) throw new Error(`${op}: ${at + T} tokens exceed the cache's ${max}`);
}

/** Appends k and v (B, Hkv, T, D) to keys and values (B, Hkv, maxLength, D) at slot `at`. */
export function cacheWrite(k: Tensor, v: Tensor, keys: Tensor, values: Tensor, at: number): void {
  checkSlot("cacheWrite", keys, k, at);
  const [, , T, D] = k.shape;
  launch(
    cacheWriteKernel,
    { k, v, keys, values },
    { n: k.size, T, D, max_length: keys.shape[2], at },
    k.size,
  );
}

/**
 * Rotates q (B, H, T, D) and returns it; rotates k and appends it and v
 * (B, Hkv, T, D) to the cache at slot `at`. cos, sin (B, 1, T, D).
 */
export function ropeCacheWrite(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  cos: Tensor,
  sin: Tensor,
  cache: { keys: Tensor; values: Tensor; at: number },
): Tensor {
  checkSlot("ropeCacheWrite", cache.keys, k, cache.at);
  const [, Hq, T, D] = q.shape;
  const qOut = Tensor.empty(q.shape);
  launch(
    ropeCacheWriteKernel,
    { q, k, v, cosT: cos, sinT: sin, q_out: qOut, keys: cache.keys, values: cache.values },
    {
      nq: q.size,
      nk: k.size,
      Hq,
      Hkv: k.shape[1],
      T,
      D,
      max_length: cache.keys.shape[2],
      at: cache.at,
      sign: 1,
    },
    q.size + k.size,
  );
  return qOut;
}

/**
 * ropeCacheWrite for one new token per row (T = 1) at each row's own
 * position: `positions` (B) i32, where a negative position writes nothing.
 */
export function ropeCacheWriteRows(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  cos: Tensor,
  sin: Tensor,
  cache: { keys: Tensor; values: Tensor; positions: Tensor },
): Tensor {
  const [B, Hq, T, D] = q.shape;
  if (T !== 1 || cache.positions.size !== B || cache.positions.dtype !== "i32") {
    throw new Error(
      `ropeCacheWriteRows: one token per row and (B) i32 positions, got q [${q.shape}] and positions [${cache.positions.shape}]`,
    );
  }
  checkSlot("ropeCacheWriteRows", cache.keys, k, 0);
  const qOut = Tensor.empty(q.shape);
  launch(
    ropeCacheWriteRowsKernel,
    {
      q,
      k,
      v,
      cosT: cos,
      sinT: sin,
      pos: cache.positions,
      q_out: qOut,
      keys: cache.keys,
      values: cache.values,
    },
    { nq: q.size, nk: k.size, Hq, Hkv: k.shape[1], D, max_length: cache.keys.shape[2], sign: 1 },
    q.size + k.size,
  );
  return qOut;
}

/** CPU references: the cache after an append, and the fused rope-and-append. */
export const kvCacheReference = {
  write: (cache: NDArray, x: NDArray, at: number): NDArray => {
    const [, , T, D] = x.shape;
    const max = cache.shape[2];
    const data = Float64Array.from(cache.data);
    x.data.forEach((value, i) => {
      const [d, t, group] = [i % D, Math.floor(i / D) % T, Math.floor(i / (D * T))];
      data[(group * max + at + t) * D + d] = value;
    });
    return { shape: cache.shape, data };
  },
  ropeWrite: (
    q: NDArray,
    k: NDArray,
    v: NDArray,
    cos: NDArray,
    sin: NDArray,
    cache: { keys: NDArray; values: NDArray; at: number },
  ): { q: NDArray; keys: NDArray; values: NDArray } => ({
    q: normReference.rope(q, cos, sin),
    keys: kvCacheReference.write(cache.keys, normReference.rope(k, cos, sin), cache.at),
    values: kvCacheReference.write(cache.values, v, cache.at),
  }),
};
