/**
 * Transformer building blocks composed from tested ops, so each inherits a
 * checked backward: linear, RMSNorm, RoPE, causal GQA attention with a padding
 * mask. Fused kernels can replace them once a measurement asks for it.
 * @module
 */
import { add, broadcastTo, matmul, mulScalar, reshape, softmax } from "./ops/mod.ts";
import { matmulBias } from "./ops/matmul.ts";
import { gradEnabled } from "./scope.ts";
import { Tensor } from "./tensor.ts";

/** y = x·Wᵀ + b for W (out, in) as Hugging Face stores it. x (..., in) -> (..., out). */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  const taped = gradEnabled() && [x, weight, bias].some((t) => t?.requiresGrad);
  // inference: the bias rides in the product's store, one dispatch instead of two
  const fused = bias && !taped ? matmulBias(x, weight, bias) : null;
  if (fused) return fused;
  const y = matmul(x, weight, { transB: true });
  return bias ? add(y, bias) : y;
}

export { rmsNorm } from "./ops/norm.ts";

/**
 * cos and sin tables (B, 1, T, D) of default RoPE for integer positions (B, T),
 * rounded the way transformers computes them in float32. inv_freq stays float32
 * whatever the weights' dtype, as `from_pretrained(dtype=bfloat16)` keeps it.
 */
export function ropeTables(
  positions: ArrayLike<number>,
  batch: number,
  seq: number,
  headDim: number,
  theta: number,
): { cos: Tensor; sin: Tensor } {
  const half = headDim / 2;
  const invFreq = Array.from(
    { length: half },
    (_, i) => Math.fround(1 / Math.fround(theta ** Math.fround((2 * i) / headDim))),
  );
  const cos = new Float32Array(batch * seq * headDim);
  const sin = new Float32Array(batch * seq * headDim);
  for (let r = 0; r < batch * seq; r++) {
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(positions[r] * invFreq[i]);
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      cos[r * headDim + i] = cos[r * headDim + i + half] = c;
      sin[r * headDim + i] = sin[r * headDim + i + half] = s;
    }
  }
  return {
    cos: Tensor.from(cos, [batch, 1, seq, headDim]),
    sin: Tensor.from(sin, [batch, 1, seq, headDim]),
  };
}

/** A large negative bias for masked scores: finite, so a fully masked row stays uniform, never NaN. */
export const MASKED = -1e30;

/**
 * Additive attention bias (B, 1, T, S): query t (at absolute slot past + t)
 * sees key s when s <= past + t and keyMask[b, s] is 1.
 */
export function attentionBias(
  keyMask: ArrayLike<number>,
  batch: number,
  seq: number,
  keys: number,
): Tensor {
  const past = keys - seq;
  const bias = new Float32Array(batch * seq * keys);
  for (let b = 0; b < batch; b++) {
    for (let t = 0; t < seq; t++) {
      for (let s = 0; s < keys; s++) {
        const visible = s <= past + t && keyMask[b * keys + s] !== 0;
        bias[(b * seq + t) * keys + s] = visible ? 0 : MASKED;
      }
    }
  }
  return Tensor.from(bias, [batch, 1, seq, keys]);
}

/**
 * softmax(q·kᵀ·scale + bias)·v with grouped-query heads, composed from tested
 * ops: the reference the fused `attention` op is checked against, and the
 * baseline of its bench. It keeps the (B, H, T, S) probabilities for backward.
 * q (B, H, T, D), k and v (B, Hkv, S, D), bias (B, 1, T, S) -> (B, H, T, D).
 */
export function composedAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  bias: Tensor,
  scale: number,
): Tensor {
  const [B, H, , D] = q.shape;
  const [, Hkv, S] = k.shape;
  if (H !== Hkv) {
    // each kv head serves H/Hkv query heads
    const rep = H / Hkv;
    const expand = (x: Tensor) =>
      reshape(broadcastTo(reshape(x, [B, Hkv, 1, S, D]), [B, Hkv, rep, S, D]), [B, H, S, D]);
    k = expand(k);
    v = expand(v);
  }
  const scores = add(mulScalar(matmul(q, k, { transB: true }), scale), bias); // (B, H, T, S)
  return matmul(softmax(scores), v);
}
