/**
 * Row kernels over the last axis of (rows, V) logits, numerically stable at
 * any V (151936 included): softmax, log-softmax, the token entropy and the
 * log-prob of given ids. One generator, `rowKernel(epilogue, length)`: long
 * rows take one workgroup each with an online logsumexp merged in a tree;
 * short rows one invocation each. The epilogue writes the outputs from the
 * row's `lse` and entropy `ent`.
 * @module
 */
import { WG } from "./common.ts";
import { declareKernel, memoKernel } from "./declare.ts";

export const ROW_WG = 128;

/** Rows at most this wide use one invocation per row (no workgroup tree). */
export const SHORT_ROW = 512;

// A NaN logit makes its row's lse and entropy NaN (so softmax and the gradients are NaN too), as
// in torch: tested on the bits, since WGSL lets compilers assume floats are never NaN.
const nanHelpers = /* wgsl */ `
fn is_nan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn nan_f32() -> f32 { var bits = 0x7fc00000u; return bitcast<f32>(bits); } // not a constant: Tint refuses a NaN constant`;

// Long rows: each thread keeps (m, s, t) = (max, sum e^(z-m), sum e^(z-m)(z-m)), merged in a
// tree, and n, its count of NaN logits. t is kept relative to the running max so that
// H = log s - t/s loses nothing to cancellation when |z| is huge.
const longStats = /* wgsl */ `${nanHelpers}
struct Acc { m: f32, s: f32, t: f32, n: u32 }
fn acc_rescale(a: Acc, m: f32) -> Acc {
  if (a.s == 0.0) { return Acc(m, 0.0, 0.0, a.n); }
  let r = exp(a.m - m);
  return Acc(m, a.s * r, r * (a.t + a.s * (a.m - m)), a.n);
}
fn acc_add(a: Acc, z: f32) -> Acc {
  if (is_nan(z)) { return Acc(a.m, a.s, a.t, a.n + 1u); }
  if (z <= -3.0e38) { return a; } // -inf logits (masked) carry no mass
  let b = acc_rescale(a, max(a.m, z));
  let d = z - b.m;
  return Acc(b.m, b.s + exp(d), b.t + exp(d) * d, b.n);
}
fn acc_merge(a: Acc, b: Acc) -> Acc {
  let m = max(a.m, b.m);
  let x = acc_rescale(a, m); let y = acc_rescale(b, m);
  return Acc(m, x.s + y.s, x.t + y.t, x.n + y.n);
}
var<workgroup> red: array<Acc, ${ROW_WG}>;
fn row_stats(row: u32, v: u32, lid: u32) -> Acc {
  var a = Acc(-3.402823e38, 0.0, 0.0, 0u);
  for (var j = lid; j < v; j += ${ROW_WG}u) { a = acc_add(a, z[row * v + j]); }
  red[lid] = a;
  workgroupBarrier();
  for (var s = ${ROW_WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = acc_merge(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  return red[0];
}`;

// Short rows: two passes over the row in one invocation, the entropy term relative to the max.
const shortStats = /* wgsl */ `${nanHelpers}
struct Stats { lse: f32, h: f32 }
fn stats(r: u32, v: u32) -> Stats {
  var m = -3.402823e38;
  var nans = 0u;
  for (var j = 0u; j < v; j++) {
    let x = z[r * v + j];
    if (is_nan(x)) { nans++; } else { m = max(m, x); }
  }
  if (nans > 0u) { return Stats(nan_f32(), nan_f32()); }
  var s = 0.0; var t = 0.0;
  for (var j = 0u; j < v; j++) {
    let d = z[r * v + j] - m;
    let e = exp(d);
    if (e > 0.0) { s += e; t += e * d; }
  }
  return Stats(m + log(s), max(log(s) - t / s, 0.0));
}`;

/** What a row kernel writes, given the row's `lse` and entropy `ent`. */
const EPILOGUES = {
  softmax: {
    inputs: { z: "f32" },
    outputs: { out: "f32" },
    perElement: "out[row * v + j] = exp(z[row * v + j] - lse);",
    perVec4: "out4[row * (v / 4u) + j] = exp(z4[row * (v / 4u) + j] - lse);",
    perRow: "",
  },
  logSoftmax: {
    inputs: { z: "f32" },
    outputs: { out: "f32" },
    perElement: "out[row * v + j] = z[row * v + j] - lse;",
    perVec4: "out4[row * (v / 4u) + j] = z4[row * (v / 4u) + j] - lse;",
    perRow: "",
  },
  entropy: {
    inputs: { z: "f32" },
    outputs: { h: "f32", lse_out: "f32" },
    perElement: "",
    perRow: "h[row] = ent; lse_out[row] = lse;",
  },
  tokenLogProb: {
    inputs: { z: "f32", ids: "i32" },
    outputs: { out: "f32", lse_out: "f32" },
    perElement: "",
    perRow: "out[row] = z[row * v + u32(ids[row])] - lse; lse_out[row] = lse;",
  },
} as const;

export type RowEpilogue = keyof typeof EPILOGUES;

/** Whether an epilogue writes whole rows, which `rowKernel(..., "long4")` writes as vec4s. */
export function writesRows(epilogue: RowEpilogue): boolean {
  return "perVec4" in EPILOGUES[epilogue];
}

/**
 * The row kernel for an epilogue: `long` rows one workgroup each, `short` one
 * invocation each. `long4` is `long` for rows of a multiple of 4 whose
 * epilogue writes every element: it reads the row again and writes it as
 * vec4s (z4 and out4 bind the same buffers as z and out), 1.2x faster for a
 * 64x151936 softmax on lavapipe, the same bits: each element keeps its expression.
 */
export const rowKernel = memoKernel((epilogue: RowEpilogue, length: "long" | "long4" | "short") => {
  const e: {
    inputs: Record<string, string>;
    outputs: Record<string, string>;
    perElement: string;
    perVec4?: string;
    perRow: string;
  } = EPILOGUES[epilogue];
  const long = length !== "short";
  const wide = length === "long4" && e.perVec4 !== undefined;
  const stats = long
    ? `let a = row_stats(row, v, lid.x);
  let lse = select(a.m + log(a.s), nan_f32(), a.n > 0u);
  let ent = select(max(log(a.s) - a.t / a.s, 0.0), nan_f32(), a.n > 0u);`
    : `let st = stats(row, v);
  let lse = st.lse;
  let ent = st.h;`;
  const elementLoop = wide
    ? `for (var j = lid.x; j < v / 4u; j += ${ROW_WG}u) { ${e.perVec4} }`
    : e.perElement
    ? `for (var j = ${long ? "lid.x" : "0u"}; j < v; j += ${
      long ? ROW_WG : 1
    }u) { ${e.perElement} }`
    : "";
  const rowWrite = e.perRow ? (long ? `if (lid.x == 0u) { ${e.perRow} }` : e.perRow) : "";
  // bindings depend on the epilogue: named by string
  return declareKernel<string, string, string>({
    label: epilogue,
    inputs: wide ? { ...e.inputs, z4: "vec4<f32>" } : e.inputs,
    outputs: wide ? { out4: "vec4<f32>" } : e.outputs,
    params: { rows: "u32", v: "u32" },
    grid: long ? "rows" : "elements",
    workgroupSize: [long ? ROW_WG : WG],
    helpers: long ? longStats : shortStats,
    main: `
  let row = ${long ? "row_index(wid, nwg)" : "flat_index(gid, nwg)"};
  let v = params.v;
  if (row >= params.rows) { return; }
  ${stats}
  ${elementLoop}
  ${rowWrite}`,
  });
});

/** dz = gH * (-p * (log p + H)), p = exp(z - lse); one invocation per element. */
export const entropyBackwardKernel = declareKernel({
  label: "entropy_bwd",
  inputs: { z: "f32", h: "f32", lse: "f32", gh: "f32" },
  outputs: { dz: "f32" },
  params: { rows: "u32", v: "u32" },
  grid: "elements",
  workgroupSize: [WG],
  main: `
  let i = flat_index(gid, nwg);
  let v = params.v;
  if (i >= params.rows * v) { return; }
  let row = i / v;
  let logp = z[i] - lse[row];
  let p = exp(logp);
  // p * logp is 0 where p underflows (also for -inf logits).
  dz[i] = select(-gh[row] * p * (logp + h[row]), 0.0, p == 0.0);`,
});

/** dz = g * (onehot(id) - p); one invocation per element. */
export const tokenLogProbBackwardKernel = declareKernel({
  label: "token_logprob_bwd",
  inputs: { z: "f32", ids: "i32", lse: "f32", g: "f32" },
  outputs: { dz: "f32" },
  params: { rows: "u32", v: "u32" },
  grid: "elements",
  workgroupSize: [WG],
  main: `
  let i = flat_index(gid, nwg);
  let v = params.v;
  if (i >= params.rows * v) { return; }
  let row = i / v;
  let p = exp(z[i] - lse[row]);
  dz[i] = g[row] * (select(0.0, 1.0, i % v == u32(ids[row])) - p);`,
});
