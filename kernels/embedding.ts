/** Embedding gather and its scatter-add backward. @module */
import { flatIndex, paramsBlock, WG } from "./common.ts";

/**
 * out[t, c] = W[ids[t] - offset, c] for ids in [offset, offset + V), else 0
 * (so a table split into row chunks is the sum of its chunks' lookups).
 * Ids outside [0, vocab) are reported in err (Device.errorBuffer: count, id,
 * vocab) by the offset-0 chunk. Params: T, C, V, offset, vocab. W is f32, or
 * bf16/f16 packed in u32.
 */
export function embeddingKernel(dtype: "f32" | "bf16" | "f16"): string {
  const load = dtype === "f32" ? "w[j]" : `unpack_half(w[j / 2u], j & 1u)`;
  const unpack = dtype === "f32" ? "" : /* wgsl */ `
fn unpack_half(word: u32, hi: u32) -> f32 {
  let h = select(word & 0xffffu, word >> 16u, hi == 1u);
  return ${dtype === "bf16" ? "bitcast<f32>(h << 16u)" : "unpack2x16float(h).x"};
}`;
  return /* wgsl */ `
${paramsBlock(5)}
@group(0) @binding(1) var<storage, read> w: array<${dtype === "f32" ? "f32" : "u32"}>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> err: array<atomic<i32>>;
${flatIndex}
${unpack}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flat_index(gid, nwg);
  let C = pu(1u);
  if (i >= pu(0u) * C) { return; }
  let t = i / C; let c = i % C;
  let vocab = pi(4u);
  if (c == 0u && pi(3u) == 0 && (ids[t] < 0 || ids[t] >= vocab)) {
    atomicAdd(&err[0], 1);
    atomicStore(&err[1], ids[t]);
    atomicStore(&err[2], vocab);
  }
  let row = ids[t] - pi(3u);
  if (row < 0 || row >= i32(pu(2u))) { out[i] = 0.0; return; }
  let j = u32(row) * C + c;
  out[i] = ${load};
}
`;
}

/**
 * dW[v, c] = sum over t with ids[t] = v of g[t, c]. One invocation per column c
 * walks every t: no atomics (WGSL has no f32 atomics) and a fixed summation order.
 * dW must be zero-filled. Params: T, C, V, offset (ids outside the chunk are skipped).
 */
export const embeddingBackwardKernel = /* wgsl */ `
${paramsBlock(4)}
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> dw: array<f32>;
${flatIndex}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let c = flat_index(gid, nwg);
  let T = pu(0u); let C = pu(1u);
  if (c >= C) { return; }
  let V = i32(pu(2u)); let offset = pi(3u);
  for (var t = 0u; t < T; t++) {
    let row = ids[t] - offset;
    if (row >= 0 && row < V) { dw[u32(row) * C + c] += g[t * C + c]; }
  }
}
`;
