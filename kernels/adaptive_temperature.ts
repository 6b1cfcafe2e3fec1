/**
 * Adaptive temperature, one workgroup per row: the largest tau in [0.01, 1]
 * with H(softmax(z / tau)) <= max(alpha * H(softmax(z)), delta), by bisection
 * (entropy grows with tau), then out = z / tau.
 * @module
 */
import { paramsBlock, workgroupReduce } from "./common.ts";

export const ADAPT_WG = 128;

/** Params: rows, V, alpha (f32), delta (f32), groupsX. Bindings: z in, out, tau (rows). */
export const adaptiveTemperatureKernel = /* wgsl */ `
${paramsBlock(5)}
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> taus: array<f32>;
${workgroupReduce(ADAPT_WG)}

// H(softmax(z / tau)) = log s - sum p c with c = (z - max) / tau
fn entropy_at(base: u32, V: u32, mx: f32, tau: f32, lid: u32) -> f32 {
  var s = 0.0;
  var pc = 0.0;
  for (var j = lid; j < V; j += ${ADAPT_WG}u) {
    let c = (z[base + j] - mx) / tau;
    let e = exp(c);
    s += e;
    pc += select(e * c, 0.0, e == 0.0);
  }
  let S = wg_reduce(s, lid, false);
  let P = wg_reduce(pc, lid, false);
  return max(log(S) - P / S, 0.0);
}

@compute @workgroup_size(${ADAPT_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  let row = wid.x + wid.y * pu(4u);
  let lid = lid3.x;
  let rows = pu(0u); let V = pu(1u);
  if (row >= rows) { return; }
  let base = row * V;
  var mx = -3.402823e38;
  for (var j = lid; j < V; j += ${ADAPT_WG}u) { mx = max(mx, z[base + j]); }
  mx = wg_reduce(mx, lid, true);
  let goal = max(pf(2u) * entropy_at(base, V, mx, 1.0, lid), pf(3u));
  var tau = 1.0;
  if (entropy_at(base, V, mx, 1.0, lid) > goal) {
    var lo = 0.01; var hi = 1.0;
    for (var it = 0; it < 30; it++) {
      let mid = 0.5 * (lo + hi);
      if (entropy_at(base, V, mx, mid, lid) <= goal) { lo = mid; } else { hi = mid; }
    }
    tau = lo;
  }
  for (var j = lid; j < V; j += ${ADAPT_WG}u) { out[base + j] = z[base + j] / tau; }
  if (lid == 0u) { taus[row] = tau; }
}
`;
