/**
 * Between safetensors' raw bytes and GPU tensors, keeping the precision.
 * @module
 */
import { device } from "./device.ts";
import { type RawTensor, type SafetensorsDType, toInt32 } from "./safetensors_format.ts";
import { type DType, DTYPE_BYTES, Tensor } from "./tensor.ts";

const TO_TENSOR_DTYPE: Partial<Record<SafetensorsDType, DType>> = {
  F32: "f32",
  BF16: "bf16",
  F16: "f16",
  I32: "i32",
};

/** Uploads a raw tensor to the GPU keeping its precision (F32, BF16, F16, I32; I64 becomes i32). */
export function tensorFromRaw(raw: RawTensor, name = "tensor"): Tensor {
  if (raw.dtype === "I64") return Tensor.from(toInt32(raw), raw.shape, { dtype: "i32" });
  const dtype = TO_TENSOR_DTYPE[raw.dtype];
  if (!dtype) throw new Error(`${name}: dtype ${raw.dtype} cannot be loaded as a tensor`);
  // loaded tensors live long (weights, optimizer state): sized exactly
  return Tensor.fromBytes(raw.data, raw.shape, dtype, { exact: true });
}

const FROM_TENSOR_DTYPE: Record<DType, SafetensorsDType> = {
  f32: "F32",
  bf16: "BF16",
  f16: "F16",
  i32: "I32",
};

/** Reads a tensor back as raw bytes in its own precision, ready for writeSafetensors. */
export async function tensorToRaw(t: Tensor): Promise<RawTensor> {
  const bytes = new Uint8Array(await device().read(t.buffer, t.size * DTYPE_BYTES[t.dtype]));
  return { dtype: FROM_TENSOR_DTYPE[t.dtype], shape: [...t.shape], data: bytes };
}

/**
 * Reads many tensors back, several per readback (each waits about 11 ms in
 * Deno), up to `groupBytes` of staging at a time.
 */
export async function tensorsToRaw(ts: Tensor[], groupBytes = 64 * 2 ** 20): Promise<RawTensor[]> {
  const out: RawTensor[] = [];
  for (let i = 0; i < ts.length;) {
    const group: Tensor[] = [];
    let bytes = 0;
    while (i < ts.length && (group.length === 0 || bytes + ts[i].byteLength <= groupBytes)) {
      bytes += ts[i].byteLength;
      group.push(ts[i++]);
    }
    const read = await device().readMany(
      group.map((t) => ({ buffer: t.buffer, bytes: t.size * DTYPE_BYTES[t.dtype] })),
    );
    group.forEach((t, k) =>
      out.push({
        dtype: FROM_TENSOR_DTYPE[t.dtype],
        shape: [...t.shape],
        data: new Uint8Array(read[k]),
      })
    );
  }
  return out;
}
