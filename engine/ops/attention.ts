/**
 * Fused causal attention with grouped-query heads and a key padding mask:
 * forward, backward (kernels/attention.ts) and a float64 CPU reference.
 * Memory is O(T): only the log-sum-exp of each query row is saved; the
 * backward recomputes the probabilities tile by tile.
 * @module
 */
import {
  attentionBackwardKeysKernel,
  attentionBackwardQueryKernel,
  attentionDecodeKernel,
  attentionForwardKernel,
  attentionRowsKernel,
  ATTN_KEYS,
  ATTN_ROWS,
} from "../../kernels/attention.ts";
import { record } from "../autograd.ts";
import { launch } from "../launch.ts";
import { Tensor } from "../tensor.ts";
import type { NDArray } from "./_reference.ts";

/**
 * Groups with at most this many query rows (H/Hkv · T: decoding) take a
 * decode kernel: keys spread over a workgroup when there are few rows in all,
 * one invocation per row when there are at least DECODE_MANY_ROWS. More rows
 * per group take the tiled kernel, which shares each K/V tile among them.
 */
export const DECODE_MAX_ROWS = 8;
export const DECODE_MANY_ROWS = 64;

export interface AttentionOptions {
  /** Multiplies q·k (1/sqrt(head_dim) for Qwen). */
  scale: number;
  /** (B, S) f32, 1 for a key that may be attended and 0 for padding. Default: every key. */
  keyMask?: Tensor;
  /**
   * Keys attended, S: the first S positions of k and v, which may be a longer
   * KV cache (B, Hkv, maxLength, D) read in place. The T queries sit at the
   * last T of them (past = S - T). Default: k's length.
   */
  keys?: number;
  /**
   * Decode with one kernel whatever the batch (one invocation per query row),
   * so a row's result does not depend on the batch it is in (a server's).
   */
  batchInvariant?: boolean;
}

/**
 * softmax(q·kᵀ·scale, causal and padding masked)·v with grouped-query heads.
 * q (B, H, T, D), k and v (B, Hkv, ≥S, D) -> (B, H, T, D). A query that sees
 * no key (a left-padding row) gets zeros.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions): Tensor {
  const [B, H, T, D] = q.shape;
  const [Bk, Hkv, L, Dk] = k.shape;
  const S = options.keys ?? L;
  if (
    q.shape.length !== 4 || k.shape.length !== 4 || v.shape.join() !== k.shape.join() ||
    Bk !== B || Dk !== D || H % Hkv !== 0 || S < T || S > L
  ) {
    throw new Error(
      `attention: q [${q.shape}] needs k and v (B, Hkv, >=S, D) with H a multiple of Hkv and ${T} <= S <= their length; got k [${k.shape}], v [${v.shape}], S ${S}`,
    );
  }
  if ([q, k, v].some((x) => x.dtype !== "f32")) throw new Error("attention: expects f32 q, k, v");
  const keyMask = options.keyMask ?? Tensor.full([B, S], 1);
  if (keyMask.dtype !== "f32" || keyMask.shape.join() !== [B, S].join()) {
    throw new Error(`attention: keyMask must be (B, S) = [${B},${S}] f32, got [${keyMask.shape}]`);
  }
  const rep = H / Hkv;
  const params = {
    rows: rep * T,
    T,
    S,
    past: S - T,
    hkv: Hkv,
    rep,
    kv_stride: L * D,
    scale: options.scale,
  };
  const o = Tensor.empty(q.shape);
  const lse = Tensor.empty([B, H, T]);
  const groups = B * Hkv;
  const buffers = { q, k, v, key_mask: keyMask, o, lse };
  const allRows = B * H * T;
  const manyRows = allRows >= DECODE_MANY_ROWS || options.batchInvariant === true;
  if (o.size > 0 && params.rows <= DECODE_MAX_ROWS && manyRows) {
    launch(attentionRowsKernel(D), buffers, { ...params, n: allRows }, allRows);
  } else if (o.size > 0 && params.rows <= DECODE_MAX_ROWS) {
    launch(attentionDecodeKernel(D), buffers, params, [params.rows, groups]);
  } else if (o.size > 0) {
    launch(attentionForwardKernel(D), buffers, params, [
      Math.ceil(params.rows / ATTN_ROWS),
      groups,
    ]);
  }
  const owned = options.keyMask ? [] : [keyMask];
  if ((k.requiresGrad || v.requiresGrad) && L !== S) {
    throw new Error(`attention: gradients flow only when k and v hold exactly the S = ${S} keys`);
  }
  return record(o, {
    op: "attention",
    inputs: [q, k, v],
    saved: [lse, ...owned],
    keeps: options.keyMask ? [keyMask] : [],
    backward: (g) => {
      const buffers = { q, k, v, key_mask: keyMask, g, lse };
      const dq = Tensor.empty(q.shape);
      const delta = Tensor.empty([B, H, T]);
      launch(attentionBackwardQueryKernel(D), { ...buffers, o, dq, delta }, params, [
        Math.ceil(params.rows / ATTN_ROWS),
        groups,
      ]);
      let dk: Tensor | null = null;
      let dv: Tensor | null = null;
      if (k.requiresGrad || v.requiresGrad) {
        dk = Tensor.empty(k.shape);
        dv = Tensor.empty(v.shape);
        launch(attentionBackwardKeysKernel(D), { ...buffers, delta, dk, dv }, params, [
          Math.ceil(S / ATTN_KEYS),
          groups,
        ]);
      }
      delta.dispose();
      if (!q.requiresGrad) dq.dispose();
      if (!k.requiresGrad) dk?.dispose();
      if (!v.requiresGrad) dv?.dispose();
      return [
        q.requiresGrad ? dq : null,
        k.requiresGrad ? dk : null,
        v.requiresGrad ? dv : null,
      ];
    },
  });
}

/**
 * float64 attention with the same masking: q (B, H, T, D), k, v (B, Hkv, S, D),
 * keyMask (B·S) -> (B, H, T, D); rows that see no key are zero.
 */
export function attentionReference(
  q: NDArray,
  k: NDArray,
  v: NDArray,
  keyMask: ArrayLike<number>,
  scale: number,
): NDArray {
  const [B, H, T, D] = q.shape;
  const [, Hkv, S] = k.shape;
  const rep = H / Hkv;
  const past = S - T;
  const out = new Float64Array(B * H * T * D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const kv = (b * Hkv + Math.floor(h / rep)) * S * D;
      for (let t = 0; t < T; t++) {
        const qo = ((b * H + h) * T + t) * D;
        const scores: number[] = [];
        for (let s = 0; s < S; s++) {
          if (s > past + t || keyMask[b * S + s] === 0) continue;
          let d = 0;
          for (let i = 0; i < D; i++) d += q.data[qo + i] * k.data[kv + s * D + i];
          scores.push(s, d * scale);
        }
        if (scores.length === 0) continue;
        let m = -Infinity;
        for (let j = 1; j < scores.length; j += 2) m = Math.max(m, scores[j]);
        let z = 0;
        for (let j = 1; j < scores.length; j += 2) z += Math.exp(scores[j] - m);
        for (let j = 0; j < scores.length; j += 2) {
          const p = Math.exp(scores[j + 1] - m) / z;
          for (let i = 0; i < D; i++) out[qo + i] += p * v.data[kv + scores[j] * D + i];
        }
      }
    }
  }
  return { shape: [B, H, T, D], data: out };
}
