/** Embedding gather and its scatter-add backward. @module */
import { flatIndex, paramsBlock, WG } from "./common.ts";

/** out[t, c] = W[ids[t], c]. Params: T, C, V. W is f32, or bf16/f16 packed in u32. */
export function embeddingKernel(dtype: "f32" | "bf16" | "f16"): string {
  const load = dtype === "f32" ? "w[j]" : `unpack_half(w[j / 2u], j & 1u)`;
  const unpack = dtype === "f32" ? "" : /* wgsl */ `
fn unpack_half(word: u32, hi: u32) -> f32 {
  let h = select(word & 0xffffu, word >> 16u, hi == 1u);
  return ${dtype === "bf16" ? "bitcast<f32>(h << 16u)" : "unpack2x16float(h).x"};
}`;
  return /* wgsl */ `
${paramsBlock(3)}
@group(0) @binding(1) var<storage, read> w: array<${dtype === "f32" ? "f32" : "u32"}>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
${flatIndex}
${unpack}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flat_index(gid, nwg);
  let C = pu(1u);
  if (i >= pu(0u) * C) { return; }
  let t = i / C; let c = i % C;
  let id = u32(clamp(ids[t], 0, i32(pu(2u)) - 1));
  let j = id * C + c;
  out[i] = ${load};
}
`;
}

/**
 * dW[v, c] = sum over t with ids[t] = v of g[t, c]. One invocation per column c
 * walks every t: no atomics (WGSL has no f32 atomics) and a fixed summation order.
 * dW must be zero-filled. Params: T, C.
 */
export const embeddingBackwardKernel = /* wgsl */ `
${paramsBlock(2)}
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> dw: array<f32>;
${flatIndex}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let c = flat_index(gid, nwg);
  let T = pu(0u); let C = pu(1u);
  if (c >= C) { return; }
  for (var t = 0u; t < T; t++) {
    let j = u32(ids[t]) * C + c;
    dw[j] += g[t * C + c];
  }
}
`;
