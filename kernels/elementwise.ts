/**
 * Elementwise kernels with broadcasting: out[i] = f(a[ia], b[ib], c[ic]).
 * Parameters: n, rank, then out shape (MAX_RANK) and each input's strides
 * (MAX_RANK, 0 where broadcast), then one f32 scalar `alpha`.
 * @module
 */
import { flatIndex, MAX_RANK, paramsBlock, WG } from "./common.ts";

/** Parameter word layout shared with engine/ops/elementwise.ts. */
export const EW = {
  n: 0,
  rank: 1,
  shape: 2,
  strides: (input: number) => 2 + MAX_RANK * (input + 1),
  alpha: (inputs: number) => 2 + MAX_RANK * (inputs + 1),
};

/** How each input is read: `f` same shape as out, `s` a single value, `b` broadcast (strided). */
export type ReadMode = "f" | "s" | "b";

/**
 * `expr` is a WGSL expression over `a`, `b`, `c` (f32 inputs, one per mode)
 * and `alpha` (f32 scalar).
 */
export function elementwiseKernel(modes: string, expr: string): string {
  const inputs = modes.length;
  const names = ["a", "b", "c"].slice(0, inputs);
  const bindings = names.map((x, i) =>
    `@group(0) @binding(${i + 1}) var<storage, read> in_${x}: array<f32>;`
  ).join("\n");
  const strided = modes.includes("b");
  const loads = names.map((x, i) => {
    if (modes[i] === "f") return `let ${x} = in_${x}[i];`;
    if (modes[i] === "s") return `let ${x} = in_${x}[0];`;
    return `var o_${x} = 0u;
  for (var d = 0u; d < rank; d++) { o_${x} += idx[d] * pu(${EW.strides(i)}u + d); }
  let ${x} = in_${x}[o_${x}];`;
  }).join("\n  ");
  const unravel = strided
    ? `let rank = pu(${EW.rank}u);
  // Unravel i over the output shape (row-major).
  var idx: array<u32, ${MAX_RANK}>;
  var rem = i;
  for (var d = i32(rank) - 1; d >= 0; d--) {
    let s = pu(${EW.shape}u + u32(d));
    idx[d] = rem % s;
    rem = rem / s;
  }`
    : "";
  return /* wgsl */ `
${paramsBlock(EW.alpha(inputs) + 1)}
${bindings}
@group(0) @binding(${inputs + 1}) var<storage, read_write> out: array<f32>;
${flatIndex}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flat_index(gid, nwg);
  if (i >= pu(${EW.n}u)) { return; }
  ${unravel}
  ${loads}
  let alpha = pf(${EW.alpha(inputs)}u);
  out[i] = ${expr};
}
`;
}

/** Strided copy: out[oOff + sum idx*oStride] = in[iOff + sum idx*iStride] over a shape. */
export const COPY = {
  n: 0,
  rank: 1,
  shape: 2,
  inOffset: 8,
  inStrides: 9,
  outOffset: 15,
  outStrides: 16,
};

export function stridedCopyKernel(word: "f32" | "u32"): string {
  return /* wgsl */ `
${paramsBlock(22)}
@group(0) @binding(1) var<storage, read> src: array<${word}>;
@group(0) @binding(2) var<storage, read_write> dst: array<${word}>;
${flatIndex}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flat_index(gid, nwg);
  if (i >= pu(${COPY.n}u)) { return; }
  let rank = pu(${COPY.rank}u);
  var rem = i;
  var si = pu(${COPY.inOffset}u);
  var di = pu(${COPY.outOffset}u);
  for (var d = i32(rank) - 1; d >= 0; d--) {
    let s = pu(${COPY.shape}u + u32(d));
    let k = rem % s;
    rem = rem / s;
    si += k * pu(${COPY.inStrides}u + u32(d));
    di += k * pu(${COPY.outStrides}u + u32(d));
  }
  dst[di] = src[si];
}
`;
}

/** Fills n f32 words with alpha. */
export const fillKernel = /* wgsl */ `
${paramsBlock(2)}
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
${flatIndex}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flat_index(gid, nwg);
  if (i < pu(0u)) { out[i] = pf(1u); }
}
`;

/** Unpacks bf16/f16 words (two per u32, little end first) to f32; i32 to f32. */
export function castToF32Kernel(from: "bf16" | "f16" | "i32"): string {
  const body = from === "i32" ? "out[i] = f32(bitcast<i32>(src[i]));" : `let w = src[i / 2u];
  let h = select(w & 0xffffu, w >> 16u, (i & 1u) == 1u);
  ${from === "bf16" ? "out[i] = bitcast<f32>(h << 16u);" : "out[i] = unpack2x16float(h).x;"}`;
  return /* wgsl */ `
${paramsBlock(1)}
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${flatIndex}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flat_index(gid, nwg);
  if (i >= pu(0u)) { return; }
  ${body}
}
`;
}
