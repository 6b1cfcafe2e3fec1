/** AdamW update, in place on (param, m, v). @module */
import { flatIndex, paramsBlock, WG } from "./common.ts";

/** Params: n, lr, beta1, beta2, eps, weightDecay, stepSize = lr/(1-b1^t), sqrt(1-b2^t). */
export const adamwKernel = /* wgsl */ `
${paramsBlock(8)}
@group(0) @binding(1) var<storage, read_write> p: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
${flatIndex}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flat_index(gid, nwg);
  if (i >= pu(0u)) { return; }
  let lr = pf(1u); let b1 = pf(2u); let b2 = pf(3u); let eps = pf(4u); let wd = pf(5u);
  let step_size = pf(6u); let bc2_sqrt = pf(7u);
  let gi = g[i];
  var w = p[i] * (1.0 - lr * wd); // decoupled weight decay
  let mi = b1 * m[i] + (1.0 - b1) * gi;
  let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
  m[i] = mi; v[i] = vi;
  p[i] = w - step_size * mi / (sqrt(vi) / bc2_sqrt + eps);
}
`;
