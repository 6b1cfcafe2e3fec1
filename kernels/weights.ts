/**
 * How kernels read weights kept in their stored precision: bf16/f16 packed
 * two per u32, unpacked in registers.
 * @module
 */

/** The storage types a weight matrix may have. */
export type WeightType = "f32" | "bf16" | "f16";

export /** `half2(w)`: the two bf16/f16 halves packed in a u32, low half first. */
function half2Fn(bType: "bf16" | "f16"): string {
  const body = bType === "bf16"
    ? "return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));"
    : "return unpack2x16float(w);";
  return `fn half2(w: u32) -> vec2<f32> { ${body} }`;
}
