/**
 * Safetensors files on disk (the format: safetensors_format.ts). Reading
 * opens the file and loads the header only; each tensor is read by name
 * with a seek, so a multi-GB checkpoint is never held in JS memory at once.
 * Writing goes to a temporary file that is renamed into place.
 * @module
 */
import { atomicWrite } from "./atomic.ts";
import {
  type ByteReader,
  type RawTensor,
  readHeader,
  SAFETENSORS_DTYPE_BYTES,
  type SafetensorsDType,
  SafetensorsError,
  SafetensorsReader,
} from "./safetensors_format.ts";

export * from "./safetensors_format.ts";

/** A file as a ByteReader: a seek and a read per request. */
function fileReader(file: Deno.FsFile, size: number): ByteReader {
  return {
    size,
    async read(offset, length, path) {
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
    },
    close() {
      try {
        file.close();
      } catch { /* already closed */ }
    },
  };
}

/** A safetensors file on disk. */
export class SafetensorsFile extends SafetensorsReader {
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
      const reader = fileReader(file, stat.size);
      const { dataStart, header } = await readHeader(path, reader);
      return new SafetensorsFile(path, reader, dataStart, header);
    } catch (e) {
      file.close();
      throw e;
    }
  }
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
