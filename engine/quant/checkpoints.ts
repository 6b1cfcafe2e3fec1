/**
 * Qwen's published pre-quantized checkpoints (GPTQ-Int4/Int8, AWQ), read as
 * laid out on Hugging Face and repacked into format.ts's layout at load.
 *
 * GPTQ (AutoGPTQ `auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py`, `pack`
 * and the dequantization of `qlinear_cuda.py`; vLLM
 * `model_executor/layers/quantization/gptq.py`): per linear, `qweight`
 * int32 (K·b/32, N) packed along K, value j of a word at bits [b·j, b·j+b);
 * `qzeros` int32 (G, N·b/32) packed the same way along N; `scales` f16
 * (G, N); `g_idx` int32 (K) the group of each input row (k / g unless
 * act-order, `desc_act`). W[n, k] = scales[g, n]·(q[k, n] - (z[g, n] + 1))
 * with g = g_idx[k]: the "+1" of the v1 `checkpoint_format` ("gptq", the
 * default, which stores zero - 1); "gptq_v2" stores the zero itself.
 *
 * AWQ GEMM (AutoAWQ `awq/modules/linear/gemm.py`, `awq/utils/packing_utils.py`):
 * `qweight` int32 (K, N/8) packed along N in the interleaved order
 * AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7] (nibble j holds column 8w + ORDER[j]);
 * `qzeros` int32 (G, N/8) the same; `scales` f16 (G, N); 4 bits only;
 * W[n, k] = (q[k, n] - z[k/g, n])·scales[k/g, n].
 * @module
 */
import { ConfigError } from "../model/config.ts";
import { type RawTensor, toFloat32 } from "../safetensors_format.ts";
import {
  codesPerWord,
  groupsOf,
  layoutProblem,
  type PackedMatrix,
  packedMatrix,
  packScaleZero,
  type QuantBits,
} from "./format.ts";

/** A checkpoint's quantization_config, checked. */
export interface CheckpointQuant {
  method: "gptq" | "awq";
  bits: QuantBits;
  /** Rows of K per scale (K itself for GPTQ's group_size -1). */
  groupSize: number;
  /** Added to stored zeros: 1 for GPTQ's v1 checkpoint format, 0 otherwise. */
  zeroOffset: number;
}

/** For AWQ's column n = 8w + i: the nibble holding it is AWQ_REVERSE_ORDER[i]. */
const AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7];

/**
 * `quantization_config` of config.json (GPTQ or AWQ), or null when absent.
 * Variants not implemented are refused naming the field and its value.
 */
export function parseQuantizationConfig(
  raw: Record<string, unknown>,
  path: string,
): CheckpointQuant | null {
  const qc = raw.quantization_config as Record<string, unknown> | undefined;
  if (qc === undefined || qc === null) return null;
  const refuse = (field: string, why: string) =>
    new ConfigError(path, `quantization_config.${field} ${why}`);
  const method = qc.quant_method;
  if (method !== "gptq" && method !== "awq") {
    throw refuse(
      "quant_method",
      `is ${
        JSON.stringify(method)
      }; loadable: "gptq", "awq" (or load the full-precision checkpoint with --quantize int4|int8)`,
    );
  }
  const bits = (qc.bits ?? qc.w_bit) as number;
  if (method === "awq" ? bits !== 4 : bits !== 4 && bits !== 8) {
    throw refuse("bits", `is ${bits}; ${method} loads ${method === "awq" ? "4" : "4 or 8"}`);
  }
  let groupSize = (qc.group_size ?? qc.q_group_size) as number;
  if (!Number.isInteger(groupSize) || (groupSize < 1 && groupSize !== -1)) {
    throw refuse(
      "group_size",
      `is ${JSON.stringify(groupSize)}; expected a positive integer or -1`,
    );
  }
  if (groupSize === -1) groupSize = 0; // one group per row, resolved per matrix
  if (method === "awq") {
    const version = String(qc.version ?? "gemm").toLowerCase();
    if (version !== "gemm") {
      throw refuse(
        "version",
        `is "${version}"; the GEMM packing is loadable (not GEMV or exllama's)`,
      );
    }
    if (qc.zero_point === false) {
      throw refuse("zero_point", "is false; AWQ without zero points is not implemented");
    }
    return { method, bits: 4, groupSize, zeroOffset: 0 };
  }
  const format = String(qc.checkpoint_format ?? "gptq");
  if (format !== "gptq" && format !== "gptq_v2") {
    throw refuse("checkpoint_format", `is "${format}"; loadable: "gptq" (v1) and "gptq_v2"`);
  }
  return { method, bits: bits as QuantBits, groupSize, zeroOffset: format === "gptq" ? 1 : 0 };
}

/** The tensors of one quantized linear (`<prefix>.qweight` ...). */
export interface QuantizedTensors {
  qweight: RawTensor;
  qzeros: RawTensor;
  scales: RawTensor;
  gIdx: RawTensor | null;
}

function int32s(t: RawTensor): Uint32Array {
  if (t.dtype !== "I32") throw new Error(`is ${t.dtype}, expected I32`);
  return new Uint32Array(t.data.buffer, t.data.byteOffset, t.data.byteLength / 4);
}

function expectShape(name: string, t: RawTensor, shape: number[]): void {
  if (t.shape.join() !== shape.join()) {
    throw new Error(`${name} has shape [${t.shape}], expected [${shape}]`);
  }
}

/**
 * One GPTQ or AWQ linear (out N, in K) as a packed matrix. `name` prefixes
 * errors (e.g. "model.layers.0.self_attn.q_proj").
 */
export function repackQuantized(
  name: string,
  t: QuantizedTensors,
  N: number,
  K: number,
  cq: CheckpointQuant,
): PackedMatrix {
  const b = cq.bits;
  const per = codesPerWord(b);
  const maxq = (1 << b) - 1;
  const g = cq.groupSize || K;
  const problem = layoutProblem(K, g);
  if (problem) throw new Error(`${name}: cannot load: ${problem}`);
  const G = groupsOf(K, g);
  const scales = toFloat32(t.scales);
  expectShape(`${name}.scales`, t.scales, [G, N]);
  let zeros: Uint32Array;
  let qweight: Uint32Array;
  try {
    zeros = int32s(t.qzeros);
    qweight = int32s(t.qweight);
  } catch (e) {
    throw new Error(`${name}.qweight/qzeros ${(e as Error).message}`);
  }
  const p = packedMatrix(b, g, N, K);
  const words = K / per; // words per row of p.q
  if (cq.method === "gptq") {
    expectShape(`${name}.qweight`, t.qweight, [K / per, N]);
    expectShape(`${name}.qzeros`, t.qzeros, [G, N / per]);
    // v1 stores zero - 1, so a zero of 0 is stored as maxq: the +1 wraps back (AutoGPTQ's
    // qlinear_cuda_old masks after adding it)
    const zeroOf = (j: number, n: number) =>
      (((zeros[j * (N / per) + Math.floor(n / per)] >>> (b * (n % per))) & maxq) + cq.zeroOffset) &
      maxq;
    const order = actOrder(name, t.gIdx, K, g);
    if (order === null) {
      // the same words, transposed: word (k / per, n) -> (n, k / per)
      for (let kw = 0; kw < words; kw++) {
        for (let n = 0; n < N; n++) p.q[n * words + kw] = qweight[kw * N + n];
      }
      for (let n = 0; n < N; n++) {
        for (let j = 0; j < G; j++) {
          p.sz[n * G + j] = packScaleZero(scales[j * N + n], zeroOf(j, n));
        }
      }
    } else {
      // act-order: stored column k' is input row perm[k'], sorted by group
      const { perm, groups } = order;
      for (let k = 0; k < K; k++) {
        const src = perm[k];
        for (let n = 0; n < N; n++) {
          const code = (qweight[Math.floor(src / per) * N + n] >>> (b * (src % per))) & maxq;
          const i = n * words + Math.floor(k / per);
          p.q[i] = (p.q[i] | (code << (b * (k % per)))) >>> 0;
        }
      }
      for (let n = 0; n < N; n++) {
        for (let j = 0; j < G; j++) {
          p.sz[n * G + j] = packScaleZero(scales[groups[j] * N + n], zeroOf(groups[j], n));
        }
      }
      p.perm = perm;
    }
    return p;
  }
  // AWQ: (K, N/8) interleaved along N -> codes along K per output row
  expectShape(`${name}.qweight`, t.qweight, [K, N / 8]);
  expectShape(`${name}.qzeros`, t.qzeros, [G, N / 8]);
  for (let k = 0; k < K; k++) {
    const shift = 4 * (k % 8);
    const kw = k >> 3;
    for (let n = 0; n < N; n++) {
      const code = (qweight[k * (N / 8) + (n >> 3)] >>> (4 * AWQ_REVERSE_ORDER[n & 7])) & 15;
      const i = n * words + kw;
      p.q[i] = (p.q[i] | (code << shift)) >>> 0;
    }
  }
  for (let n = 0; n < N; n++) {
    for (let j = 0; j < G; j++) {
      const zero = (zeros[j * (N / 8) + (n >> 3)] >>> (4 * AWQ_REVERSE_ORDER[n & 7])) & 15;
      p.sz[n * G + j] = packScaleZero(scales[j * N + n], zero);
    }
  }
  return p;
}

/**
 * GPTQ's g_idx: null when it is k / g (or absent); for act-order, the input
 * rows sorted by group (stable) and, per stored group, its checkpoint group.
 */
function actOrder(
  name: string,
  gIdx: RawTensor | null,
  K: number,
  g: number,
): { perm: Int32Array; groups: number[] } | null {
  if (!gIdx) return null;
  expectShape(`${name}.g_idx`, gIdx, [K]);
  const idx = new Int32Array(gIdx.data.buffer, gIdx.data.byteOffset, K);
  if (idx.every((v, k) => v === Math.floor(k / g))) return null;
  const perm = Int32Array.from({ length: K }, (_, k) => k).sort((a, b) => idx[a] - idx[b] || a - b);
  // each stored group of g rows must come from one checkpoint group
  const groups: number[] = [];
  for (let j = 0; j * g < K; j++) {
    const first = idx[perm[j * g]];
    for (let k = j * g; k < Math.min(K, (j + 1) * g); k++) {
      if (idx[perm[k]] !== first) {
        throw new Error(
          `${name}.g_idx: group ${first} does not hold ${g} rows (act-order groups must have group_size rows each)`,
        );
      }
    }
    groups.push(first);
  }
  return { perm, groups };
}
