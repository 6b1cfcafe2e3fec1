/**
 * Group-wise integer weights: the packed layout every quantized kernel
 * reads, the round-to-nearest quantizer of `--quantize`, and the float64
 * reference dequantization the tests hold the kernels and loaders to.
 *
 * A weight W (N, K) (a linear layer's, output rows) is stored as
 * - `q` (N, K / per) u32: row n's codes along k, `per` = 32 / bits to a
 *   word, code k at bits [bits·(k % per), bits·(k % per) + bits) (GPTQ's
 *   order, low bits first, but along each output row);
 * - `sz` (N, G) u32: each group's f16 scale (low half) and f16 zero point
 *   (high half, an integer), G = ceil(K / groupSize);
 * W[n, k] = (q[n, k] - zero[n, k / g]) · scale[n, k / g]. Groups hold whole
 * multiples of 32 codes, so a kernel's 128-bit load lies in one group.
 * Checkpoints quantized with act-order (GPTQ `desc_act`) are stored with
 * their input columns sorted by group, and `perm` gathers x to match.
 * @module
 */
import { f16ToF32, f32ToF16 } from "../half.ts";

export type QuantBits = 4 | 8;

/** How `--quantize` quantizes: bits, group size along K, and zero points (asymmetric) or not. */
export interface QuantScheme {
  bits: QuantBits;
  /** Codes per scale; a multiple of 32, or 0 for one group per row. */
  groupSize: number;
  symmetric: boolean;
}

/**
 * The schemes `--quantize int4|int8` use, chosen by the measured error
 * (`deno task bench:quant`, README "Quantized weights"): zero points beat
 * symmetric grids at every group size; int4 in groups of 32 halves the
 * logits' KL of groups of 64 for 0.5 more bits per weight (llama.cpp's
 * Q4_1 and WebLLM's q4f16_1 make the same choice); int8's error is small
 * at any size, so its groups are 128 (8.25 bits).
 */
export const QUANT_SCHEMES: Record<"int4" | "int8", QuantScheme> = {
  int4: { bits: 4, groupSize: 32, symmetric: false },
  int8: { bits: 8, groupSize: 128, symmetric: false },
};

/** A quantized matrix on the CPU, in the packed layout. */
export interface PackedMatrix {
  bits: QuantBits;
  groupSize: number;
  rows: number;
  cols: number;
  q: Uint32Array;
  sz: Uint32Array;
  /** Act-order: stored column j holds input column perm[j] (null: the identity). */
  perm: Int32Array | null;
}

/** Codes per u32 word. */
export function codesPerWord(bits: QuantBits): number {
  return 32 / bits;
}

export function groupsOf(cols: number, groupSize: number): number {
  return Math.ceil(cols / groupSize);
}

/** Why a (rows, cols) matrix cannot take this layout, or null. */
export function layoutProblem(cols: number, groupSize: number): string | null {
  if (cols % 32 !== 0) return `its input size ${cols} is not a multiple of 32`;
  if (groupSize % 32 !== 0) return `the group size ${groupSize} is not a multiple of 32`;
  return null;
}

/** f16 scale and zero in one u32, as the kernels unpack them (unpack2x16float). */
export function packScaleZero(scale: number, zero: number): number {
  return (f32ToF16(scale) | (f32ToF16(zero) << 16)) >>> 0;
}

export function unpackScaleZero(u: number): [scale: number, zero: number] {
  return [f16ToF32(u & 0xffff), f16ToF32(u >>> 16)];
}

/** An empty packed matrix (codes and scales to fill). */
export function packedMatrix(
  bits: QuantBits,
  groupSize: number,
  rows: number,
  cols: number,
): PackedMatrix {
  const problem = layoutProblem(cols, groupSize);
  if (problem) throw new Error(`quantized layout: ${problem}`);
  return {
    bits,
    groupSize,
    rows,
    cols,
    q: new Uint32Array(rows * (cols / codesPerWord(bits))),
    sz: new Uint32Array(rows * groupsOf(cols, groupSize)),
    perm: null,
  };
}

/** Sets code (n, k) of a packed matrix whose q is still zero there. */
export function setCode(p: PackedMatrix, n: number, k: number, code: number): void {
  const per = codesPerWord(p.bits);
  const i = n * (p.cols / per) + Math.floor(k / per);
  p.q[i] = (p.q[i] | (code << (p.bits * (k % per)))) >>> 0;
}

export function codeAt(p: PackedMatrix, n: number, k: number): number {
  const per = codesPerWord(p.bits);
  const w = p.q[n * (p.cols / per) + Math.floor(k / per)];
  return (w >>> (p.bits * (k % per))) & ((1 << p.bits) - 1);
}

/**
 * Round-to-nearest group-wise quantization of W (rows, cols) row-major, as
 * GPTQ's quantizer does without its error feedback: per group, asymmetric
 * scale = (max - min) / (2^b - 1) over [min(0, min), max(0, max)] and
 * zero = round(-min / scale); symmetric scale = 2·max|w| / (2^b - 1) and
 * zero = 2^(b-1). Scales are rounded to f16 before the codes are taken.
 */
export function quantizeMatrix(
  w: Float32Array,
  rows: number,
  cols: number,
  scheme: QuantScheme,
): PackedMatrix {
  const g = scheme.groupSize || cols;
  const p = packedMatrix(scheme.bits, g, rows, cols);
  const maxq = (1 << scheme.bits) - 1;
  const G = groupsOf(cols, g);
  for (let n = 0; n < rows; n++) {
    for (let j = 0; j < G; j++) {
      const from = n * cols + j * g;
      const to = n * cols + Math.min((j + 1) * g, cols);
      let lo = 0;
      let hi = 0;
      for (let i = from; i < to; i++) {
        if (w[i] < lo) lo = w[i];
        if (w[i] > hi) hi = w[i];
      }
      let scale: number;
      let zero: number;
      if (scheme.symmetric) {
        const m = Math.max(-lo, hi);
        scale = (2 * m) / maxq;
        zero = (maxq + 1) / 2;
      } else {
        scale = (hi - lo) / maxq;
        zero = 0;
      }
      if (scale === 0) scale = 1; // an all-zero group
      scale = f16ToF32(f32ToF16(scale));
      if (!scheme.symmetric) zero = Math.min(maxq, Math.max(0, Math.round(-lo / scale)));
      p.sz[n * G + j] = packScaleZero(scale, zero);
      for (let i = from; i < to; i++) {
        const code = Math.min(maxq, Math.max(0, Math.round(w[i] / scale) + zero));
        setCode(p, n, i - n * cols, code);
      }
    }
  }
  return p;
}

/** W (rows, cols) in float64 from the packed layout, input columns in their original order. */
export function dequantizeMatrix(p: PackedMatrix): Float64Array {
  const G = groupsOf(p.cols, p.groupSize);
  const out = new Float64Array(p.rows * p.cols);
  for (let n = 0; n < p.rows; n++) {
    for (let k = 0; k < p.cols; k++) {
      const [scale, zero] = unpackScaleZero(p.sz[n * G + Math.floor(k / p.groupSize)]);
      const col = p.perm ? p.perm[k] : k;
      out[n * p.cols + col] = (codeAt(p, n, k) - zero) * scale;
    }
  }
  return out;
}
