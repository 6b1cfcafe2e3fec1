/**
 * EM-INF on the GPU: each row of logits (one workgroup per row) takes up to
 * n Adam steps on the logits themselves to lower entropy + kl_weight * KL(p0||p),
 * stopping once its entropy is below the threshold, all inside one dispatch.
 * @module
 */
import { workgroupReduce } from "./common.ts";
import { declareKernel } from "./declare.ts";

export const EMINF_WG = 128;

/**
 * z0 (rows, V) in; z (rows, V) out; m, v (rows, V) Adam scratch; used (rows): steps taken;
 * bias (steps) of (lr / (1 - b1^t), sqrt(1 - b2^t)), computed in float64 on the CPU as torch does.
 *
 * Per step, with p = softmax(z), a_i = dH/dp_i = -(log(p_i + 1e-12) + p_i / (p_i + 1e-12)):
 *   H = -sum p log(p + 1e-12); stop if H < threshold
 *   dH/dz_j = p_j (a_j - sum_i p_i a_i);  dKL/dz_j = p_j - p0_j
 *   Adam (torch): m, v moments; z -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
 */
export const emInfKernel = declareKernel({
  label: "em_inf",
  inputs: { z0: "f32", bias: "vec2<f32>" },
  outputs: { z: "f32", m: "f32", v: "f32", used: "u32" },
  params: { rows: "u32", V: "u32", steps: "u32", klWeight: "f32", threshold: "f32" },
  grid: "rows",
  workgroupSize: [EMINF_WG],
  helpers: /* wgsl */ `
${workgroupReduce(EMINF_WG)}

// (max, sum e^(z-max)) of a row of z or z0: softmax is e/s and log p = (z - max) - log s,
// so an error in log(s) shifts every log p equally and cancels in a_j - sum p a.
fn row_stats(src_is_z0: bool, base: u32, V: u32, lid: u32) -> vec2<f32> {
  var mx = -3.402823e38;
  for (var j = lid; j < V; j += ${EMINF_WG}u) { mx = max(mx, select(z[base + j], z0[base + j], src_is_z0)); }
  mx = wg_reduce(mx, lid, true);
  var s = 0.0;
  for (var j = lid; j < V; j += ${EMINF_WG}u) { s += exp(select(z[base + j], z0[base + j], src_is_z0) - mx); }
  return vec2<f32>(mx, wg_reduce(s, lid, false));
}

// e = log(1 + 1e-12 / p), the eps term of log(p + 1e-12) = log p + e
fn eps_log(p: f32) -> f32 {
  let x = 1e-12 / max(p, 1e-38);
  return select(log(1.0 + x), x - 0.5 * x * x, x < 1e-3);
}

`,
  main: /* wgsl */ `
  let row = row_index(wid, nwg);
  let lid = lid.x;
  let rows = params.rows; let V = params.V; let steps = params.steps;
  let kw = params.klWeight; let threshold = params.threshold;
  if (row >= rows) { return; }
  let base = row * V;
  for (var j = lid; j < V; j += ${EMINF_WG}u) { z[base + j] = z0[base + j]; m[base + j] = 0.0; v[base + j] = 0.0; }
  storageBarrier();
  let st0 = row_stats(true, base, V, lid);
  var taken = 0u;
  for (var t = 1u; t <= steps; t++) {
    // c = z - max, p = e^c / s, log(p + eps) = c - log s + e, r = eps / (p + eps).
    // With bars as p-weighted means: H = log s - cbar - ebar and
    // a_j - sum p a = -((c_j - cbar) + (e_j - ebar)) + (r_j - rbar): all small numbers, no cancellation.
    let st = row_stats(false, base, V, lid);
    var cs = 0.0; var es = 0.0; var rs = 0.0;
    for (var j = lid; j < V; j += ${EMINF_WG}u) {
      let c = z[base + j] - st.x;
      let p = exp(c) / st.y;
      cs += p * c;
      es += p * eps_log(p);
      rs += p * (1e-12 / (p + 1e-12));
    }
    let cbar = wg_reduce(cs, lid, false);
    let ebar = wg_reduce(es, lid, false);
    let rbar = wg_reduce(rs, lid, false);
    let H = log(st.y) - cbar - ebar;
    if (H < threshold) { break; }
    let step_size = bias[t - 1u].x;
    let bc2 = bias[t - 1u].y;
    for (var j = lid; j < V; j += ${EMINF_WG}u) {
      let i = base + j;
      let c = z[i] - st.x;
      let p = exp(c) / st.y;
      let p0 = exp(z0[i] - st0.x) / st0.y;
      let da = -((c - cbar) + (eps_log(p) - ebar)) + (1e-12 / (p + 1e-12) - rbar);
      let g = p * da + kw * (p - p0);
      let mi = 0.9 * m[i] + 0.1 * g;
      let vi = 0.999 * v[i] + 0.001 * g * g;
      m[i] = mi; v[i] = vi;
      z[i] = z[i] - step_size * mi / (sqrt(vi) / bc2 + 1e-8);
    }
    taken = t;
    storageBarrier();
  }
  if (lid == 0u) { used[row] = taken; }`,
});
