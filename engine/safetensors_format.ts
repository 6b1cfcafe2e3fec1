/**
 * The safetensors format (an 8-byte little-endian header length, a JSON
 * header, then raw little-endian data): the header's checks and reading
 * tensor by tensor from any random-access bytes (a file in Deno,
 * safetensors.ts; fetched bytes in a browser). No file system, no GPU.
 * @module
 */
import { f16ToF32 } from "./half.ts";

/** Thrown for a malformed or unreadable safetensors file; the message names the file. */
export class SafetensorsError extends Error {
  constructor(path: string, problem: string) {
    super(`${path}: ${problem}`);
    this.name = "SafetensorsError";
  }
}

/** Element sizes of the safetensors dtypes. */
export const SAFETENSORS_DTYPE_BYTES = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
} as const;

export type SafetensorsDType = keyof typeof SAFETENSORS_DTYPE_BYTES;

/** One tensor's entry in a header; offsets are relative to the data section. */
export interface TensorEntry {
  dtype: SafetensorsDType;
  shape: number[];
  dataOffsets: [number, number];
}

/** A tensor's raw bytes with its dtype and shape. */
export interface RawTensor {
  dtype: SafetensorsDType;
  shape: number[];
  data: Uint8Array;
}

const MAX_HEADER = 100 * 1024 * 1024;

/** Parses and validates a header; `dataBytes` is the size of the data section. */
export function parseHeader(
  path: string,
  json: string,
  dataBytes: number,
): { entries: Map<string, TensorEntry>; metadata: Record<string, string> } {
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch (e) {
    throw new SafetensorsError(path, `header is not valid JSON (${(e as Error).message})`);
  }
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) {
    throw new SafetensorsError(path, "header is not a JSON object");
  }
  const entries = new Map<string, TensorEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(raw as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (!value || typeof value !== "object" || Array.isArray(value)) {
        throw new SafetensorsError(path, "__metadata__ must be an object of strings");
      }
      metadata = Object.fromEntries(
        Object.entries(value as Record<string, unknown>).map(([k, v]) => {
          if (typeof v !== "string") {
            throw new SafetensorsError(path, `__metadata__.${k} must be a string`);
          }
          return [k, v];
        }),
      );
      continue;
    }
    const v = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (!v || typeof v !== "object") {
      throw new SafetensorsError(path, `tensor "${name}": entry is not an object`);
    }
    if (typeof v.dtype !== "string" || !(v.dtype in SAFETENSORS_DTYPE_BYTES)) {
      throw new SafetensorsError(
        path,
        `tensor "${name}": unknown dtype ${JSON.stringify(v.dtype)}`,
      );
    }
    const dtype = v.dtype as SafetensorsDType;
    if (
      !Array.isArray(v.shape) || !v.shape.every((d) => Number.isSafeInteger(d) && d >= 0)
    ) {
      throw new SafetensorsError(
        path,
        `tensor "${name}": shape ${JSON.stringify(v.shape)} is invalid`,
      );
    }
    const off = v.data_offsets;
    if (
      !Array.isArray(off) || off.length !== 2 ||
      !off.every((o) => Number.isSafeInteger(o) && o >= 0) || off[0] > off[1]
    ) {
      throw new SafetensorsError(
        path,
        `tensor "${name}": data_offsets ${JSON.stringify(off)} are invalid`,
      );
    }
    if (off[1] > dataBytes) {
      throw new SafetensorsError(
        path,
        `tensor "${name}": data_offsets [${off}] run past the end of the data (${dataBytes} bytes); truncated file?`,
      );
    }
    const shape = v.shape as number[];
    const expected = shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPE_BYTES[dtype];
    if (off[1] - off[0] !== expected) {
      throw new SafetensorsError(
        path,
        `tensor "${name}": shape [${shape}] ${dtype} needs ${expected} bytes but data_offsets hold ${
          off[1] - off[0]
        }`,
      );
    }
    entries.set(name, { dtype, shape, dataOffsets: [off[0], off[1]] });
  }
  const sorted = [...entries].sort((a, b) => a[1].dataOffsets[0] - b[1].dataOffsets[0]);
  for (let i = 1; i < sorted.length; i++) {
    const [prevName, prev] = sorted[i - 1];
    const [name, cur] = sorted[i];
    if (cur.dataOffsets[0] < prev.dataOffsets[1]) {
      throw new SafetensorsError(path, `tensors "${prevName}" and "${name}" overlap in the data`);
    }
  }
  return { entries, metadata };
}

/** Random-access bytes: a file, or bytes in memory. */
export interface ByteReader {
  readonly size: number;
  /** Exactly `length` bytes at `offset` (errors name `path`). */
  read(offset: number, length: number, path: string): Promise<Uint8Array>;
  close(): void;
}

/** Bytes already in memory (a fetched file) as a ByteReader. */
export function bytesReader(bytes: Uint8Array): ByteReader {
  return {
    size: bytes.length,
    read: (offset, length, path) => {
      if (offset + length > bytes.length) {
        return Promise.reject(
          new SafetensorsError(path, `truncated: wanted ${length} bytes at ${offset}`),
        );
      }
      return Promise.resolve(bytes.subarray(offset, offset + length));
    },
    close: () => {},
  };
}

/** An open safetensors file: the header in memory, tensors read on demand. */
export class SafetensorsReader {
  readonly path: string;
  readonly entries: Map<string, TensorEntry>;
  readonly metadata: Record<string, string>;
  #reader: ByteReader;
  #dataStart: number;

  protected constructor(
    path: string,
    reader: ByteReader,
    dataStart: number,
    header: ReturnType<typeof parseHeader>,
  ) {
    this.path = path;
    this.#reader = reader;
    this.#dataStart = dataStart;
    this.entries = header.entries;
    this.metadata = header.metadata;
  }

  /** Validates the header of the bytes `reader` gives (`path` names them in errors). */
  static async fromReader(path: string, reader: ByteReader): Promise<SafetensorsReader> {
    const { dataStart, header } = await readHeader(path, reader);
    return new SafetensorsReader(path, reader, dataStart, header);
  }

  /** Tensor names in file order. */
  get names(): string[] {
    return [...this.entries.keys()];
  }

  /** Reads one tensor's bytes. */
  async read(name: string): Promise<RawTensor> {
    const e = this.entries.get(name);
    if (!e) throw new SafetensorsError(this.path, `no tensor named "${name}"`);
    const [s, end] = e.dataOffsets;
    const data = await this.#reader.read(this.#dataStart + s, end - s, this.path);
    return { dtype: e.dtype, shape: e.shape, data };
  }

  close(): void {
    this.#reader.close();
  }
}

/** The header of `reader`'s bytes and where their data starts. */
export async function readHeader(
  path: string,
  reader: ByteReader,
): Promise<{ dataStart: number; header: ReturnType<typeof parseHeader> }> {
  const size = reader.size;
  if (size < 8) {
    throw new SafetensorsError(path, `truncated: ${size} bytes, no 8-byte header length`);
  }
  const lenBytes = await reader.read(0, 8, path);
  const headerLen = Number(
    new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true),
  );
  if (headerLen > size - 8) {
    throw new SafetensorsError(
      path,
      `header length ${headerLen} runs past the end of the file (${size} bytes); truncated file?`,
    );
  }
  if (headerLen > MAX_HEADER) {
    throw new SafetensorsError(path, `header length ${headerLen} exceeds ${MAX_HEADER} bytes`);
  }
  const json = new TextDecoder().decode(await reader.read(8, headerLen, path));
  return { dataStart: 8 + headerLen, header: parseHeader(path, json, size - 8 - headerLen) };
}

/** Decodes raw tensor bytes to float32 values (F32, F16, BF16, F64, I32, I64, U8, I8, I16, U16, U32, BOOL). */
export function toFloat32(t: RawTensor): Float32Array {
  const n = t.shape.reduce((a, b) => a * b, 1);
  const dv = new DataView(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const out = new Float32Array(n);
  const u32 = new Uint32Array(1);
  const f32 = new Float32Array(u32.buffer);
  for (let i = 0; i < n; i++) {
    switch (t.dtype) {
      case "F32":
        out[i] = dv.getFloat32(i * 4, true);
        break;
      case "F64":
        out[i] = dv.getFloat64(i * 8, true);
        break;
      case "BF16":
        u32[0] = dv.getUint16(i * 2, true) << 16;
        out[i] = f32[0];
        break;
      case "F16":
        out[i] = f16ToF32(dv.getUint16(i * 2, true));
        break;
      case "I32":
        out[i] = dv.getInt32(i * 4, true);
        break;
      case "U32":
        out[i] = dv.getUint32(i * 4, true);
        break;
      case "I64":
        out[i] = Number(dv.getBigInt64(i * 8, true));
        break;
      case "I16":
        out[i] = dv.getInt16(i * 2, true);
        break;
      case "U16":
        out[i] = dv.getUint16(i * 2, true);
        break;
      case "I8":
        out[i] = dv.getInt8(i);
        break;
      case "U8":
      case "BOOL":
        out[i] = dv.getUint8(i);
        break;
      default:
        throw new Error(`toFloat32: cannot decode ${t.dtype}`);
    }
  }
  return out;
}

/** Decodes integer tensors (I32, I64, ...) to Int32Array. */
export function toInt32(t: RawTensor): Int32Array {
  const n = t.shape.reduce((a, b) => a * b, 1);
  const dv = new DataView(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  if (t.dtype === "I64") {
    return Int32Array.from({ length: n }, (_, i) => Number(dv.getBigInt64(i * 8, true)));
  }
  if (t.dtype === "I32") return Int32Array.from({ length: n }, (_, i) => dv.getInt32(i * 4, true));
  return Int32Array.from(toFloat32(t));
}
