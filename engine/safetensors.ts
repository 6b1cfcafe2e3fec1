/**
 * The safetensors file format, reader and writer (an 8-byte little-endian
 * header length, a JSON header, then raw little-endian data), with no GPU.
 *
 * Reading opens the file and loads the header only; each tensor is read by
 * name with a seek, so a multi-GB checkpoint is never held in JS memory at
 * once. Writing goes to a temporary file that is renamed into place.
 * @module
 */
import { atomicWrite } from "./atomic.ts";
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

/** An open safetensors file: the header in memory, tensors read on demand. */
export class SafetensorsFile {
  readonly path: string;
  readonly entries: Map<string, TensorEntry>;
  readonly metadata: Record<string, string>;
  #file: Deno.FsFile;
  #dataStart: number;

  private constructor(
    path: string,
    file: Deno.FsFile,
    dataStart: number,
    header: ReturnType<typeof parseHeader>,
  ) {
    this.path = path;
    this.#file = file;
    this.#dataStart = dataStart;
    this.entries = header.entries;
    this.metadata = header.metadata;
  }

  /** Opens `path` and validates its header. */
  static async open(path: string): Promise<SafetensorsFile> {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      throw new SafetensorsError(path, `cannot open (${(e as Error).message})`);
    }
    try {
      const stat = await file.stat();
      if (stat.isDirectory) {
        throw new SafetensorsError(path, "is a directory, not a safetensors file");
      }
      const size = stat.size;
      if (size < 8) {
        throw new SafetensorsError(path, `truncated: ${size} bytes, no 8-byte header length`);
      }
      const lenBytes = await readExact(file, 0, 8, path);
      const headerLen = Number(new DataView(lenBytes.buffer).getBigUint64(0, true));
      if (headerLen > size - 8) {
        throw new SafetensorsError(
          path,
          `header length ${headerLen} runs past the end of the file (${size} bytes); truncated file?`,
        );
      }
      if (headerLen > MAX_HEADER) {
        throw new SafetensorsError(path, `header length ${headerLen} exceeds ${MAX_HEADER} bytes`);
      }
      const json = new TextDecoder().decode(await readExact(file, 8, headerLen, path));
      const header = parseHeader(path, json, size - 8 - headerLen);
      return new SafetensorsFile(path, file, 8 + headerLen, header);
    } catch (e) {
      file.close();
      throw e;
    }
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
    const data = await readExact(this.#file, this.#dataStart + s, end - s, this.path);
    return { dtype: e.dtype, shape: e.shape, data };
  }

  close(): void {
    try {
      this.#file.close();
    } catch { /* already closed */ }
  }
}

async function readExact(
  file: Deno.FsFile,
  offset: number,
  length: number,
  path: string,
): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  await file.seek(offset, Deno.SeekMode.Start);
  let got = 0;
  while (got < length) {
    const n = await file.read(buf.subarray(got));
    if (n === null) {
      throw new SafetensorsError(
        path,
        `truncated: wanted ${length} bytes at ${offset}, got ${got}`,
      );
    }
    got += n;
  }
  return buf;
}

/** Reads every tensor of a file (small files; use SafetensorsFile for big ones). */
export async function readSafetensors(
  path: string,
): Promise<{ tensors: Map<string, RawTensor>; metadata: Record<string, string> }> {
  const f = await SafetensorsFile.open(path);
  try {
    const tensors = new Map<string, RawTensor>();
    for (const name of f.names) tensors.set(name, await f.read(name));
    return { tensors, metadata: f.metadata };
  } finally {
    f.close();
  }
}

/** A tensor to write: raw bytes or a typed array matching the dtype. */
export interface TensorToWrite {
  dtype: SafetensorsDType;
  shape: number[];
  data: ArrayBufferView;
}

/** Writes tensors (in the given order) to `path` atomically: temp file, then rename. */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, TensorToWrite> | Map<string, TensorToWrite>,
  metadata: Record<string, string> = {},
): Promise<void> {
  const list = tensors instanceof Map ? [...tensors] : Object.entries(tensors);
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of list) {
    if (!(t.dtype in SAFETENSORS_DTYPE_BYTES)) {
      throw new SafetensorsError(path, `tensor "${name}": unknown dtype ${t.dtype}`);
    }
    const need = t.shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPE_BYTES[t.dtype];
    if (t.data.byteLength !== need) {
      throw new SafetensorsError(
        path,
        `tensor "${name}": ${t.data.byteLength} bytes for shape [${t.shape}] ${t.dtype} (need ${need})`,
      );
    }
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + need] };
    offset += need;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  // pad with spaces so the data starts 8-byte aligned (counted in bytes: metadata may be non-ASCII)
  const jsonBytes = new Uint8Array(Math.ceil(json.length / 8) * 8).fill(0x20);
  jsonBytes.set(json);
  const lenBytes = new Uint8Array(8);
  new DataView(lenBytes.buffer).setBigUint64(0, BigInt(jsonBytes.length), true);
  await atomicWrite(path, async (file) => {
    await writeAll(file, lenBytes);
    await writeAll(file, jsonBytes);
    for (const [, t] of list) {
      await writeAll(file, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    }
  });
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += await file.write(bytes.subarray(done));
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
