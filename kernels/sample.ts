/**
 * Token sampling on the GPU, one workgroup per row of logits (rows, V):
 * greedy argmax, or temperature + top-k + top-p then inverse-CDF sampling
 * with a given uniform u per row. Thresholds are found by bisection on the
 * logit value (no sort), so a 151936-wide row needs no scratch memory.
 * @module
 */
import { workgroupReduce } from "./common.ts";
import { declareKernel, memoKernel } from "./declare.ts";

export const SAMPLE_WG = 128;

/**
 * z (rows, V) logits, u (rows) uniforms; ids (rows) out. greedy is 0/1; top_k 0 and top_p 1
 * are off. A row holding NaN or +Inf (or no finite logit) gets id 0, never an id outside
 * the vocabulary, and bad[row] = step + 1 if it is still 0. `perRow`: the settings come from
 * rp (rows, 4) = (greedy, temperature, top_k, top_p) per row instead of the parameters (a
 * server's batch of requests); the same arithmetic. `wg`: threads per row (a
 * power of 2; fewer for short rows, which leave most of 128 idle).
 */
export const sampleKernel = memoKernel((perRow: boolean, wg: number = SAMPLE_WG) =>
  // bindings depend on perRow: named by string
  declareKernel<string, string, string>({
    label: perRow ? "sample_rows" : "sample",
    inputs: perRow ? { z: "f32", u: "f32", rp: "f32" } : { z: "f32", u: "f32" },
    outputs: { ids: "i32", bad: "i32" },
    params: {
      rows: "u32",
      V: "u32",
      greedy: "u32",
      temperature: "f32",
      top_k: "u32",
      top_p: "f32",
      step: "u32",
    },
    grid: "rows",
    workgroupSize: [wg],
    helpers: /* wgsl */ `
var<workgroup> red_f: array<f32, ${wg}>;
var<workgroup> red_i: array<u32, ${wg}>;
var<workgroup> shared_f: array<f32, 4>;
var<workgroup> settings: vec4<f32>;
${workgroupReduce(wg)}
fn wg_max(v: f32, lid: u32) -> f32 { return wg_reduce(v, lid, true); }
fn wg_sum(v: f32, lid: u32) -> f32 { return wg_reduce(v, lid, false); }
fn wg_count(v: u32, lid: u32) -> u32 {
  red_i[lid] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { red_i[lid] = red_i[lid] + red_i[lid + s]; }
    workgroupBarrier();
  }
  let r = red_i[0];
  workgroupBarrier();
  return r;
}

`,
    main: /* wgsl */ `
  let row = row_index(wid, nwg);
  let lid = lid.x;
  let rows = params.rows; let V = params.V;
  if (row >= rows) { return; }
  let base = row * V;
  ${
      perRow
        ? `// the row's settings, made workgroup-uniform (the branches below hold barriers)
  if (lid == 0u) { settings = vec4<f32>(rp[row * 4u], rp[row * 4u + 1u], rp[row * 4u + 2u], rp[row * 4u + 3u]); }
  let own = workgroupUniformLoad(&settings);
  let greedy = own.x != 0.0;
  let temp = own.y; let top_k = u32(own.z); let top_p = own.w;`
        : `let greedy = params.greedy == 1u;
  let temp = params.temperature; let top_k = params.top_k; let top_p = params.top_p;`
    }
  // chunk of this thread: contiguous, so the inverse CDF walks indices in order
  let chunk = (V + ${wg - 1}u) / ${wg}u;
  let j0 = min(lid * chunk, V); let j1 = min(j0 + chunk, V);

  // max logit (first index on ties for greedy). -Inf bans a token; NaN, +Inf, or a row
  // with no finite logit cannot be sampled. Checked on the bits: NaN compares unreliably.
  var m = -3.402823e38;
  var unusable = 0.0;
  var finite = 0.0;
  for (var j = j0; j < j1; j++) {
    let v = z[base + j];
    let bits = bitcast<u32>(v);
    if ((bits & 0x7f800000u) != 0x7f800000u) { finite = 1.0; m = max(m, v); }
    else if (bits != 0xff800000u) { unusable = 1.0; }
  }
  m = wg_max(m, lid);
  if (wg_max(unusable, lid) > 0.0 || wg_max(finite, lid) == 0.0) {
    if (lid == 0u) {
      ids[row] = 0;
      if (bad[row] == 0) { bad[row] = i32(params.step) + 1; }
    }
    return;
  }
  if (greedy) {
    var first = 0xffffffffu;
    for (var j = j0; j < j1; j++) { if (z[base + j] == m && first == 0xffffffffu) { first = j; } }
    red_i[lid] = first;
    workgroupBarrier();
    for (var s = ${wg / 2}u; s > 0u; s >>= 1u) {
      if (lid < s) { red_i[lid] = min(red_i[lid], red_i[lid + s]); }
      workgroupBarrier();
    }
    if (lid == 0u) { ids[row] = i32(min(red_i[0], V - 1u)); }
    return;
  }

  // lowest kept logit: top-k then top-p thresholds, by bisection on the value
  var lo = -3.402823e38;
  var mn = 3.402823e38;
  for (var j = j0; j < j1; j++) { let v = z[base + j]; if (v >= -3.402823e38) { mn = min(mn, v); } }
  mn = -wg_max(-mn, lid);
  if (top_k > 0u && top_k < V) {
    // largest t with count(z >= t) >= k
    var a = mn; var b = m;
    for (var it = 0; it < 40; it++) {
      let t = a + (b - a) * 0.5;
      var c = 0u;
      for (var j = j0; j < j1; j++) { c += select(0u, 1u, z[base + j] >= t); }
      if (wg_count(c, lid) >= top_k) { a = t; } else { b = t; }
    }
    lo = a;
  }
  var total = 0.0;
  for (var j = j0; j < j1; j++) {
    let v = z[base + j];
    if (v >= lo) { total += exp((v - m) / temp); }
  }
  total = wg_sum(total, lid);
  if (top_p < 1.0) {
    // largest t >= lo whose kept mass (z >= t) is still >= top_p of the total
    var a = max(lo, mn); var b = m;
    for (var it = 0; it < 40; it++) {
      let t = a + (b - a) * 0.5;
      var s = 0.0;
      for (var j = j0; j < j1; j++) {
        let v = z[base + j];
        if (v >= t) { s += exp((v - m) / temp); }
      }
      if (wg_sum(s, lid) >= top_p * total) { a = t; } else { b = t; }
    }
    lo = a;
    var kept = 0.0;
    for (var j = j0; j < j1; j++) {
      let v = z[base + j];
      if (v >= lo) { kept += exp((v - m) / temp); }
    }
    total = wg_sum(kept, lid);
  }

  // inverse CDF in index order: chunk masses, prefix on thread 0, then one thread walks
  var mine = 0.0;
  for (var j = j0; j < j1; j++) {
    let v = z[base + j];
    if (v >= lo) { mine += exp((v - m) / temp); }
  }
  red_f[lid] = mine;
  workgroupBarrier();
  if (lid == 0u) {
    let goal = u[row] * total;
    var acc = 0.0;
    var owner = ${wg - 1}u;
    var before = 0.0;
    for (var t = 0u; t < ${wg}u; t++) {
      if (red_f[t] > 0.0) { owner = t; before = acc; }
      if (acc + red_f[t] > goal && red_f[t] > 0.0) { owner = t; before = acc; break; }
      acc += red_f[t];
    }
    shared_f[0] = f32(owner);
    shared_f[1] = goal - before;
  }
  workgroupBarrier();
  if (lid == u32(shared_f[0])) {
    var rest = shared_f[1];
    var pick = j0;
    for (var j = j0; j < j1; j++) {
      let v = z[base + j];
      if (v >= lo) {
        pick = j;
        let p = exp((v - m) / temp);
        if (rest < p) { break; }
        rest -= p;
      }
    }
    ids[row] = i32(min(pick, V - 1u));
  }`,
  })
);

/**
 * Scatters freshly sampled ids into a per-slot id buffer: out[i] = fresh[src[i]]
 * where src[i] >= 0, else old[i] (slots that did not sample keep their id).
 */
export const mergeIdsKernel = declareKernel({
  label: "merge_ids",
  inputs: { old: "i32", fresh: "i32", src: "i32" },
  outputs: { out: "i32" },
  params: { n: "u32" },
  grid: "elements",
  workgroupSize: [64],
  main: /* wgsl */ `
  let i = flat_index(gid, nwg);
  if (i >= params.n) { return; }
  let j = src[i];
  out[i] = select(old[i], fresh[u32(max(j, 0))], j >= 0);`,
});
