/** Fused RMSNorm and RoPE kernels. @module */
import { flatIndex, paramsBlock, WG } from "./common.ts";

/**
 * RMSNorm forward, one invocation per row: r = rsqrt(mean(x^2) + eps), y = x * r * w.
 * Params: rows, C, eps (f32). Bindings: x, w, y, r (rows).
 */
export const rmsNormForwardKernel = /* wgsl */ `
${paramsBlock(3)}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;
${flatIndex}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = flat_index(gid, nwg);
  let C = pu(1u);
  if (row >= pu(0u)) { return; }
  let base = row * C;
  var ss = 0.0;
  for (var j = 0u; j < C; j++) { ss += x[base + j] * x[base + j]; }
  let r = inverseSqrt(ss / f32(C) + pf(2u));
  for (var j = 0u; j < C; j++) { y[base + j] = x[base + j] * r * w[j]; }
  rstd[row] = r;
}
`;

/**
 * RMSNorm input gradient, one invocation per row:
 * dx = r * (w*g - x * r^2 * mean(w*g*x)). Params: rows, C. Bindings: x, w, r, g, dx.
 */
export const rmsNormBackwardKernel = /* wgsl */ `
${paramsBlock(2)}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<storage, read> g: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
${flatIndex}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = flat_index(gid, nwg);
  let C = pu(1u);
  if (row >= pu(0u)) { return; }
  let base = row * C;
  let r = rstd[row];
  var dot = 0.0;
  for (var j = 0u; j < C; j++) { dot += w[j] * g[base + j] * x[base + j]; }
  let k = r * r * dot / f32(C);
  for (var j = 0u; j < C; j++) { dx[base + j] = r * (w[j] * g[base + j] - x[base + j] * k); }
}
`;

/**
 * RoPE: out = x * cos + rotate_half(x) * sin * sign, rotate_half(x) = [-x2, x1].
 * x (B, H, T, D); cos, sin (B, 1, T, D) with equal halves. sign -1 gives the
 * backward (rotate_half's transpose is -rotate_half and sin's halves are equal).
 * Params: n, H, T, D, sign (f32).
 */
export const ropeKernel = /* wgsl */ `
${paramsBlock(5)}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> cosT: array<f32>;
@group(0) @binding(3) var<storage, read> sinT: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
${flatIndex}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flat_index(gid, nwg);
  if (i >= pu(0u)) { return; }
  let H = pu(1u); let T = pu(2u); let D = pu(3u);
  let d = i % D;
  let t = (i / D) % T;
  let b = i / (D * T * H);
  let half = D / 2u;
  let rot = select(x[i - half], -x[i + half], d < half);
  let c = (b * T + t) * D + d;
  out[i] = x[i] * cosT[c] + rot * sinT[c] * pf(4u);
}
`;
