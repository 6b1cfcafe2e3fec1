/**
 * Adaptive temperature, one workgroup per row: the largest tau in [0.01, 1]
 * with H(softmax(z / tau)) <= max(alpha * H(softmax(z)), delta), by bisection
 * (entropy grows with tau), then out = z / tau.
 * @module
 */
import { workgroupReduce } from "./common.ts";
import { declareKernel } from "./declare.ts";

export const ADAPT_WG = 128;

/** z (rows, V) in; out = z / tau; taus (rows). */
export const adaptiveTemperatureKernel = declareKernel({
  label: "adaptive_temp",
  inputs: { z: "f32" },
  outputs: { out: "f32", taus: "f32" },
  params: { rows: "u32", V: "u32", alpha: "f32", delta: "f32" },
  grid: "rows",
  workgroupSize: [ADAPT_WG],
  helpers: /* wgsl */ `
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

`,
  main: /* wgsl */ `
  let row = row_index(wid, nwg);
  let lid = lid.x;
  let rows = params.rows; let V = params.V;
  if (row >= rows) { return; }
  let base = row * V;
  var mx = -3.402823e38;
  for (var j = lid; j < V; j += ${ADAPT_WG}u) { mx = max(mx, z[base + j]); }
  mx = wg_reduce(mx, lid, true);
  let goal = max(params.alpha * entropy_at(base, V, mx, 1.0, lid), params.delta);
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
  if (lid == 0u) { taus[row] = tau; }`,
});
