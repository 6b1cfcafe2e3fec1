/**
 * Fused (flash-style) attention: K/V in tiles through workgroup memory, an
 * online softmax, and only the log-sum-exp of each query row kept, so memory
 * is O(T), never (T, S) scores. The backward recomputes the probabilities
 * tile by tile in two kernels with no atomics: one per query row (dq, and
 * delta = rowsum(dO·O)), one per key row (dk, dv, summed over the query heads
 * that share the key head, so GQA needs no repeated K/V).
 *
 * Layout: q, o, dO (B, H, T, D); the `rep = H / Hkv` query heads of one KV
 * head are `rows = rep * T` consecutive rows, one "group" per (b, kv head).
 * k, v (B, Hkv, ·, D) with `kv_stride` elements between groups, so a KV cache
 * (B, Hkv, maxLength, D) is read in place. Query t (absolute slot past + t)
 * sees key s when s <= past + t and key_mask[b, s] != 0. A query that sees no
 * key gets o = 0 and no gradient.
 * @module
 */
import { declareKernel, memoKernel } from "./declare.ts";

/** Query rows per workgroup of the forward and dq kernels (one invocation each). */
export const ATTN_ROWS = 32;
/** Key rows per workgroup of the dk/dv kernel (one invocation each). */
export const ATTN_KEYS = 32;

/** Rows of K/V (or Q/dO) per tile: two (tile, D) f32 tiles fit 16 KiB of workgroup memory. */
export function attentionTile(D: number): number {
  return D <= 64 ? 16 : 8;
}

const PARAMS = {
  rows: "u32", // rep * T query rows per group
  T: "u32",
  S: "u32", // keys seen (past + T)
  past: "u32",
  hkv: "u32",
  rep: "u32",
  kv_stride: "u32", // elements between groups of k and v
  scale: "f32",
} as const;

// dot of two D-vectors held as D/4 vec4s
function common(D: number): string {
  const D4 = D / 4;
  return /* wgsl */ `
const D4 = ${D4}u;
const TILE = ${attentionTile(D)}u;
const NONE = -3.0e38; // a masked score
fn sees(b: u32, t: u32, s: u32) -> bool {
  return s <= params.past + t && key_mask[b * params.S + s] != 0.0;
}
// the last key any of the group rows [first, last] can see, plus one
fn key_end(first: u32, last: u32) -> u32 {
  var tmax = params.T - 1u;
  if (first / params.T == last / params.T) { tmax = last % params.T; }
  return min(params.S, params.past + tmax + 1u);
}`;
}

// K/V tiles in workgroup memory, shared by the forward and the dq kernel
const KV_TILES = /* wgsl */ `
var<workgroup> kt: array<vec4<f32>, TILE * D4>;
var<workgroup> vt: array<vec4<f32>, TILE * D4>;
fn load_kv_tile(kvbase: u32, s0: u32, kend: u32, lane: u32) {
  for (var i = lane; i < TILE * D4; i += ${ATTN_ROWS}u) {
    let s = s0 + i / D4;
    if (s < kend) { kt[i] = k[kvbase + s * D4 + i % D4]; vt[i] = v[kvbase + s * D4 + i % D4]; }
  }
}`;

// which query row an invocation of a row-tiled kernel owns, and the keys its workgroup sees
const QUERY_ROWS = /* wgsl */ `
  let group = wid.y;
  let b = group / params.hkv;
  let first = wid.x * ${ATTN_ROWS}u;
  let last = min(first + ${ATTN_ROWS}u, params.rows) - 1u;
  let row = min(first + lid.x, last); // surplus invocations repeat the last row, write nothing
  let t = row % params.T;
  let r = group * params.rows + row;
  let qbase = r * D4;
  let kvbase = group * (params.kv_stride / 4u);
  let kend = key_end(first, last);`;

function checkHeadDim(D: number): void {
  if (D % 4 !== 0 || D > 256) {
    throw new Error(`attention: head_dim ${D} must be a multiple of 4, at most 256`);
  }
}

/**
 * Forward: o (B, H, T, D) and lse (B, H, T). Workgroups (ceil(rows / 32), B * Hkv).
 */
export const attentionForwardKernel = memoKernel((D: number) => {
  checkHeadDim(D);
  return declareKernel({
    label: `attention_fwd_d${D}`,
    inputs: { q: "vec4<f32>", k: "vec4<f32>", v: "vec4<f32>", key_mask: "f32" },
    outputs: { o: "vec4<f32>", lse: "f32" },
    params: PARAMS,
    grid: "workgroups",
    workgroupSize: [ATTN_ROWS],
    helpers: common(D) + KV_TILES,
    main: /* wgsl */ `
${QUERY_ROWS}
  var qs: array<vec4<f32>, D4>;
  var acc: array<vec4<f32>, D4>;
  for (var i = 0u; i < D4; i++) { qs[i] = q[qbase + i] * params.scale; acc[i] = vec4(0.0); }
  var m = NONE;
  var l = 0.0;
  for (var s0 = 0u; s0 < kend; s0 += TILE) {
    load_kv_tile(kvbase, s0, kend, lid.x);
    workgroupBarrier();
    var sc: array<f32, TILE>;
    var tm = m;
    for (var j = 0u; j < TILE; j++) {
      let s = s0 + j;
      sc[j] = NONE;
      if (s < kend && sees(b, t, s)) {
        var d = vec4(0.0);
        for (var i = 0u; i < D4; i++) { d += qs[i] * kt[j * D4 + i]; }
        sc[j] = d.x + d.y + d.z + d.w;
        tm = max(tm, sc[j]);
      }
    }
    let corr = exp(m - tm);
    l *= corr;
    for (var i = 0u; i < D4; i++) { acc[i] *= corr; }
    for (var j = 0u; j < TILE; j++) {
      if (sc[j] > NONE) {
        let p = exp(sc[j] - tm);
        l += p;
        for (var i = 0u; i < D4; i++) { acc[i] += p * vt[j * D4 + i]; }
      }
    }
    m = tm;
    workgroupBarrier();
  }
  if (first + lid.x <= last) {
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var i = 0u; i < D4; i++) { o[qbase + i] = acc[i] * inv; }
    lse[r] = select(0.0, m + log(l), l > 0.0);
  }`,
  });
});

/**
 * Backward for q: dq (B, H, T, D) and delta = rowsum(dO·O) (B, H, T), with
 * p = exp(q·k·scale - lse) and dq = scale · Σ p (dO·v - delta) k.
 * Workgroups (ceil(rows / 32), B * Hkv).
 */
export const attentionBackwardQueryKernel = memoKernel((D: number) => {
  checkHeadDim(D);
  return declareKernel({
    label: `attention_bwd_q_d${D}`,
    inputs: {
      q: "vec4<f32>",
      k: "vec4<f32>",
      v: "vec4<f32>",
      key_mask: "f32",
      o: "vec4<f32>",
      g: "vec4<f32>",
      lse: "f32",
    },
    outputs: { dq: "vec4<f32>", delta: "f32" },
    params: PARAMS,
    grid: "workgroups",
    workgroupSize: [ATTN_ROWS],
    helpers: common(D) + KV_TILES,
    main: /* wgsl */ `
${QUERY_ROWS}
  var qs: array<vec4<f32>, D4>;
  var gs: array<vec4<f32>, D4>;
  var acc: array<vec4<f32>, D4>;
  var dd = vec4(0.0);
  for (var i = 0u; i < D4; i++) {
    qs[i] = q[qbase + i] * params.scale;
    gs[i] = g[qbase + i];
    dd += gs[i] * o[qbase + i];
    acc[i] = vec4(0.0);
  }
  let dl = dd.x + dd.y + dd.z + dd.w;
  let row_lse = lse[r];
  for (var s0 = 0u; s0 < kend; s0 += TILE) {
    load_kv_tile(kvbase, s0, kend, lid.x);
    workgroupBarrier();
    for (var j = 0u; j < TILE; j++) {
      let s = s0 + j;
      if (s < kend && sees(b, t, s)) {
        var d = vec4(0.0);
        var dp = vec4(0.0);
        for (var i = 0u; i < D4; i++) { d += qs[i] * kt[j * D4 + i]; dp += gs[i] * vt[j * D4 + i]; }
        let p = exp(d.x + d.y + d.z + d.w - row_lse);
        let ds = p * (dp.x + dp.y + dp.z + dp.w - dl);
        for (var i = 0u; i < D4; i++) { acc[i] += ds * kt[j * D4 + i]; }
      }
    }
    workgroupBarrier();
  }
  if (first + lid.x <= last) {
    for (var i = 0u; i < D4; i++) { dq[qbase + i] = acc[i] * params.scale; }
    delta[r] = dl;
  }`,
  });
});

/**
 * Backward for k and v: dk, dv (B, Hkv, S, D), one invocation per key summing
 * over the rep query heads of its group: dv = Σ p dO, dk = scale · Σ p (dO·v - delta) q.
 * Workgroups (ceil(S / 32), B * Hkv).
 */
export const attentionBackwardKeysKernel = memoKernel((D: number) => {
  checkHeadDim(D);
  return declareKernel({
    label: `attention_bwd_kv_d${D}`,
    inputs: {
      q: "vec4<f32>",
      k: "vec4<f32>",
      v: "vec4<f32>",
      key_mask: "f32",
      g: "vec4<f32>",
      lse: "f32",
      delta: "f32",
    },
    outputs: { dk: "vec4<f32>", dv: "vec4<f32>" },
    params: PARAMS,
    grid: "workgroups",
    workgroupSize: [ATTN_KEYS],
    helpers: common(D) + /* wgsl */ `
var<workgroup> qt: array<vec4<f32>, TILE * D4>;
var<workgroup> gt: array<vec4<f32>, TILE * D4>;
var<workgroup> lt: array<f32, TILE>;
var<workgroup> dt: array<f32, TILE>;`,
    main: /* wgsl */ `
  let group = wid.y;
  let b = group / params.hkv;
  let first = wid.x * ${ATTN_KEYS}u;
  let s = min(first + lid.x, params.S - 1u);
  let kvbase = group * (params.kv_stride / 4u) + s * D4;
  var ks: array<vec4<f32>, D4>;
  var vs: array<vec4<f32>, D4>;
  var dks: array<vec4<f32>, D4>;
  var dvs: array<vec4<f32>, D4>;
  for (var i = 0u; i < D4; i++) {
    ks[i] = k[kvbase + i] * params.scale;
    vs[i] = v[kvbase + i];
    dks[i] = vec4(0.0);
    dvs[i] = vec4(0.0);
  }
  // causal: query t sees keys up to past + t, so this block's first key is first seen at t0
  let t0 = select(0u, first - params.past, first > params.past);
  let qrow0 = group * params.rows;
  for (var h = 0u; h < params.rep; h++) {
    for (var tb = t0; tb < params.T; tb += TILE) {
      for (var i = lid.x; i < TILE * D4; i += ${ATTN_KEYS}u) {
        let t = tb + i / D4;
        if (t < params.T) {
          let r = qrow0 + h * params.T + t;
          qt[i] = q[r * D4 + i % D4];
          gt[i] = g[r * D4 + i % D4];
        }
      }
      if (lid.x < TILE && tb + lid.x < params.T) {
        let r = qrow0 + h * params.T + tb + lid.x;
        lt[lid.x] = lse[r];
        dt[lid.x] = delta[r];
      }
      workgroupBarrier();
      for (var j = 0u; j < TILE; j++) {
        let t = tb + j;
        if (t < params.T && sees(b, t, s)) {
          var d = vec4(0.0);
          var dp = vec4(0.0);
          for (var i = 0u; i < D4; i++) { d += ks[i] * qt[j * D4 + i]; dp += vs[i] * gt[j * D4 + i]; }
          let p = exp(d.x + d.y + d.z + d.w - lt[j]);
          let ds = p * (dp.x + dp.y + dp.z + dp.w - dt[j]);
          for (var i = 0u; i < D4; i++) {
            dvs[i] += p * gt[j * D4 + i];
            dks[i] += ds * qt[j * D4 + i];
          }
        }
      }
      workgroupBarrier();
    }
  }
  if (first + lid.x < params.S) {
    let out = (group * params.S + s) * D4;
    for (var i = 0u; i < D4; i++) { dk[out + i] = dks[i] * params.scale; dv[out + i] = dvs[i]; }
  }`,
  });
});

/** Keys per tile of the decode kernel: one score per invocation. */
export const DECODE_KEYS = 64;

/**
 * Forward for few query rows (decoding): one workgroup per query row, the
 * keys of a tile spread over its 64 invocations (one score each), then each
 * invocation accumulates its own output dims over the tile. Every invocation
 * works, where the row-per-invocation forward would leave most of 32 idle.
 * Same outputs as the forward: o (B, H, T, D), lse (B, H, T). Workgroups (rows, B * Hkv).
 */
export const attentionDecodeKernel = memoKernel((D: number) => {
  checkHeadDim(D);
  const perThread = Math.ceil(D / DECODE_KEYS);
  return declareKernel({
    label: `attention_decode_d${D}`,
    inputs: { q: "vec4<f32>", k: "vec4<f32>", v: "f32", key_mask: "f32" },
    outputs: { o: "f32", lse: "f32" },
    params: PARAMS,
    grid: "workgroups",
    workgroupSize: [DECODE_KEYS],
    helpers: common(D) + /* wgsl */ `
const KT = ${DECODE_KEYS}u;
const DPT = ${perThread}u; // output dims per invocation: lid, lid + 64, ...
var<workgroup> sc: array<f32, KT>;`,
    main: /* wgsl */ `
  let group = wid.y;
  let b = group / params.hkv;
  let row = wid.x;
  let t = row % params.T;
  let r = group * params.rows + row;
  let kvbase = group * (params.kv_stride / 4u);
  var qs: array<vec4<f32>, D4>;
  for (var i = 0u; i < D4; i++) { qs[i] = q[r * D4 + i] * params.scale; }
  var acc: array<f32, DPT>;
  var m = NONE;
  var l = 0.0;
  let kend = min(params.S, params.past + t + 1u);
  for (var s0 = 0u; s0 < kend; s0 += KT) {
    let s = s0 + lid.x;
    var x = NONE;
    if (s < kend && sees(b, t, s)) {
      var d = vec4(0.0);
      for (var i = 0u; i < D4; i++) { d += qs[i] * k[kvbase + s * D4 + i]; }
      x = d.x + d.y + d.z + d.w;
    }
    sc[lid.x] = x;
    workgroupBarrier();
    var tm = m;
    for (var j = 0u; j < KT; j++) { tm = max(tm, sc[j]); }
    let corr = exp(m - tm);
    l *= corr;
    for (var c = 0u; c < DPT; c++) { acc[c] *= corr; }
    let n = min(KT, kend - s0);
    for (var j = 0u; j < n; j++) {
      if (sc[j] > NONE) {
        let p = exp(sc[j] - tm);
        l += p;
        let vrow = (kvbase + (s0 + j) * D4) * 4u;
        for (var c = 0u; c < DPT; c++) {
          let dim = lid.x + c * KT;
          if (dim < ${D}u) { acc[c] += p * v[vrow + dim]; }
        }
      }
    }
    m = tm;
    workgroupBarrier();
  }
  let inv = select(0.0, 1.0 / l, l > 0.0);
  for (var c = 0u; c < DPT; c++) {
    let dim = lid.x + c * KT;
    if (dim < ${D}u) { o[r * ${D}u + dim] = acc[c] * inv; }
  }
  if (lid.x == 0u) { lse[r] = select(0.0, m + log(l), l > 0.0); }`,
  });
});

/**
 * Forward with one invocation per query row and no workgroup memory or
 * barriers, K/V read straight from the cache: for decoding many rows
 * (B·H ≥ 64), where a workgroup per row costs more than it shares.
 * Same outputs as the forward. Grid: elements, one per (B, H, T) row.
 */
export const attentionRowsKernel = memoKernel((D: number) => {
  checkHeadDim(D);
  return declareKernel({
    label: `attention_rows_d${D}`,
    inputs: { q: "vec4<f32>", k: "vec4<f32>", v: "vec4<f32>", key_mask: "f32" },
    outputs: { o: "vec4<f32>", lse: "f32" },
    params: { ...PARAMS, n: "u32" },
    grid: "elements",
    workgroupSize: [64],
    helpers: common(D),
    main: /* wgsl */ `
  let r = flat_index(gid, nwg);
  if (r >= params.n) { return; }
  let group = r / params.rows;
  let b = group / params.hkv;
  let t = (r % params.rows) % params.T;
  let kvbase = group * (params.kv_stride / 4u);
  var qs: array<vec4<f32>, D4>;
  var acc: array<vec4<f32>, D4>;
  for (var i = 0u; i < D4; i++) { qs[i] = q[r * D4 + i] * params.scale; acc[i] = vec4(0.0); }
  var m = NONE;
  var l = 0.0;
  let kend = min(params.S, params.past + t + 1u);
  for (var s = 0u; s < kend; s++) {
    if (!sees(b, t, s)) { continue; }
    var d = vec4(0.0);
    for (var i = 0u; i < D4; i++) { d += qs[i] * k[kvbase + s * D4 + i]; }
    let x = d.x + d.y + d.z + d.w;
    if (x > m) {
      let corr = exp(m - x);
      l *= corr;
      for (var i = 0u; i < D4; i++) { acc[i] *= corr; }
      m = x;
    }
    let p = exp(x - m);
    l += p;
    for (var i = 0u; i < D4; i++) { acc[i] += p * v[kvbase + s * D4 + i]; }
  }
  let inv = select(0.0, 1.0 / l, l > 0.0);
  for (var i = 0u; i < D4; i++) { o[r * D4 + i] = acc[i] * inv; }
  lse[r] = select(0.0, m + log(l), l > 0.0);`,
  });
});
