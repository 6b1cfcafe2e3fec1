/**
 * A quantized matrix on the GPU: format.ts's packed codes and group scales,
 * in row parts that each fit one storage binding, and for act-order
 * checkpoints the column order. Frozen: it takes no gradient.
 * @module
 */
import { device } from "../device.ts";
import { Tensor } from "../tensor.ts";
import { type DecoderConfig, decoderParameters, linearShapes } from "../model/config.ts";
import { codesPerWord, groupsOf, type PackedMatrix, type QuantBits } from "./format.ts";

/** Output rows [from, from + rows) of a quantized matrix: codes (rows, K/per) and scales (rows, G). */
export interface QuantizedPart {
  q: Tensor;
  sz: Tensor;
  from: number;
  rows: number;
}

export class QuantizedWeight {
  constructor(
    readonly bits: QuantBits,
    readonly groupSize: number,
    /** N, output features. */
    readonly rows: number,
    /** K, input features. */
    readonly cols: number,
    readonly parts: QuantizedPart[],
    /** Act-order: x's columns are gathered by it first (i32, K), or null. */
    readonly perm: Tensor | null,
    /** perm's host copy. */
    readonly order: Int32Array | null = null,
  ) {}

  /** Uploads a packed matrix, split by rows where the codes exceed `maxBindingBytes`. */
  static upload(p: PackedMatrix, maxBindingBytes?: number): QuantizedWeight {
    const limit = maxBindingBytes ?? device().info.maxStorageBufferBindingSize;
    const words = p.cols / codesPerWord(p.bits);
    const G = groupsOf(p.cols, p.groupSize);
    const rowsPerPart = Math.max(1, Math.floor(limit / (4 * words)));
    const parts: QuantizedPart[] = [];
    for (let from = 0; from < p.rows; from += rowsPerPart) {
      const rows = Math.min(rowsPerPart, p.rows - from);
      const q = p.q.subarray(from * words, (from + rows) * words);
      const sz = p.sz.subarray(from * G, (from + rows) * G);
      parts.push({
        q: Tensor.fromBytes(
          new Uint8Array(q.buffer, q.byteOffset, q.byteLength),
          [rows, words],
          "i32",
          { exact: true },
        ),
        sz: Tensor.fromBytes(
          new Uint8Array(sz.buffer, sz.byteOffset, sz.byteLength),
          [rows, G],
          "i32",
          { exact: true },
        ),
        from,
        rows,
      });
    }
    const perm = p.perm ? Tensor.from(Array.from(p.perm), [p.cols], { dtype: "i32" }) : null;
    return new QuantizedWeight(p.bits, p.groupSize, p.rows, p.cols, parts, perm, p.perm);
  }

  /** The packed matrix again from the codes and scales read back (`raw`: tensors()' bytes, in order). */
  packed(raw: Uint8Array[]): PackedMatrix {
    const words = this.cols / codesPerWord(this.bits);
    const G = groupsOf(this.cols, this.groupSize);
    const q = new Uint32Array(this.rows * words);
    const sz = new Uint32Array(this.rows * G);
    this.parts.forEach((part, i) => {
      const u32 = (b: Uint8Array) => new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4);
      q.set(u32(raw[2 * i]), part.from * words);
      sz.set(u32(raw[2 * i + 1]), part.from * G);
    });
    return {
      bits: this.bits,
      groupSize: this.groupSize,
      rows: this.rows,
      cols: this.cols,
      q,
      sz,
      perm: this.order,
    };
  }

  /** Every buffer it holds. */
  tensors(): Tensor[] {
    return [...this.parts.flatMap((p) => [p.q, p.sz]), ...(this.perm ? [this.perm] : [])];
  }

  /** Bytes on the GPU. */
  get bytes(): number {
    return this.tensors().reduce((n, t) => n + t.byteLength, 0);
  }

  dispose(): void {
    this.tensors().forEach((t) => t.dispose());
  }
}

/** GPU bytes of an (N, K) matrix quantized to `bits` in groups of `groupSize` (0: K). */
export function quantizedBytes(N: number, K: number, bits: QuantBits, groupSize: number): number {
  return N * (K * bits / 8) + 4 * N * groupsOf(K, groupSize || K);
}

/**
 * GPU bytes of a model's weights: every tensor at `elementBytes` (2 for a
 * bf16/f16 checkpoint kept as stored, 4 in f32), except the decoder layers'
 * linear matrices when `quant` quantizes them (the embedding, head and norms
 * stay as stored).
 */
export function modelWeightBytes(
  c: DecoderConfig,
  elementBytes: number,
  quant: { bits: QuantBits; groupSize: number } | null,
): number {
  const linears = linearShapes(c);
  let bytes = 0;
  for (const [, shape] of decoderParameters(c)) {
    bytes += elementBytes * shape.reduce((a, b) => a * b, 1);
  }
  if (!quant) return bytes;
  for (const [out, inF] of Object.values(linears)) {
    bytes += c.numLayers *
      (quantizedBytes(out, inF, quant.bits, quant.groupSize) - elementBytes * out * inF);
  }
  return bytes;
}
