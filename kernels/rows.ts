/**
 * Row kernels over the last axis of (rows, V) logits, one workgroup per row,
 * numerically stable at any V (151936 included) with an online logsumexp:
 * each thread keeps (m, s, t) = (max, sum e^(z-m), sum e^(z-m) z), merged in a tree.
 * @module
 */
import { flatIndex, paramsBlock, WG } from "./common.ts";

export const ROW_WG = 128;

const onlineLse = /* wgsl */ `
// t is kept relative to the running max, t = sum e^(z-m) (z-m), so that
// H = log s - t / s loses nothing to cancellation when |z| is huge.
struct Acc { m: f32, s: f32, t: f32 }
fn acc_rescale(a: Acc, m: f32) -> Acc {
  if (a.s == 0.0) { return Acc(m, 0.0, 0.0); }
  let r = exp(a.m - m);
  return Acc(m, a.s * r, r * (a.t + a.s * (a.m - m)));
}
fn acc_add(a: Acc, z: f32) -> Acc {
  if (z <= -3.0e38) { return a; } // -inf logits (masked) carry no mass
  let b = acc_rescale(a, max(a.m, z));
  let d = z - b.m;
  return Acc(b.m, b.s + exp(d), b.t + exp(d) * d);
}
fn acc_merge(a: Acc, b: Acc) -> Acc {
  let m = max(a.m, b.m);
  let x = acc_rescale(a, m); let y = acc_rescale(b, m);
  return Acc(m, x.s + y.s, x.t + y.t);
}
var<workgroup> red: array<Acc, ${ROW_WG}>;
fn row_stats(row: u32, v: u32, lid: u32) -> Acc {
  var a = Acc(-3.402823e38, 0.0, 0.0);
  for (var j = lid; j < v; j += ${ROW_WG}u) { a = acc_add(a, z[row * v + j]); }
  red[lid] = a;
  workgroupBarrier();
  for (var s = ${ROW_WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = acc_merge(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  return red[0];
}
`;

const rowHeader = /* wgsl */ `
@compute @workgroup_size(${ROW_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  let row = wid.x + wid.y * pu(2u);
  let lid = lid3.x;
  let rows = pu(0u); let v = pu(1u);
  if (row >= rows) { return; }
`;

/** Params: rows, V, groupsX. out = z - lse (log) or exp(z - lse) (softmax). */
export function softmaxKernel(log: boolean): string {
  return /* wgsl */ `
${paramsBlock(3)}
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${onlineLse}
${rowHeader}
  let a = row_stats(row, v, lid);
  let lse = a.m + log(a.s);
  for (var j = lid; j < v; j += ${ROW_WG}u) {
    let y = z[row * v + j] - lse;
    out[row * v + j] = ${log ? "y" : "exp(y)"};
  }
}
`;
}

/** Token entropy H = lse - sum p z per row; also writes lse for the backward. */
export const entropyForwardKernel = /* wgsl */ `
${paramsBlock(3)}
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read_write> h: array<f32>;
@group(0) @binding(3) var<storage, read_write> lse_out: array<f32>;
${onlineLse}
${rowHeader}
  let a = row_stats(row, v, lid);
  if (lid == 0u) {
    let lse = a.m + log(a.s);
    h[row] = max(log(a.s) - a.t / a.s, 0.0);
    lse_out[row] = lse;
  }
}
`;

/** dz = gH * (-p * (log p + H)), p = exp(z - lse); one invocation per element. Params: rows, V. */
export const entropyBackwardKernel = /* wgsl */ `
${paramsBlock(2)}
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> h: array<f32>;
@group(0) @binding(3) var<storage, read> lse: array<f32>;
@group(0) @binding(4) var<storage, read> gh: array<f32>;
@group(0) @binding(5) var<storage, read_write> dz: array<f32>;
${flatIndex}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flat_index(gid, nwg);
  let v = pu(1u);
  if (i >= pu(0u) * v) { return; }
  let row = i / v;
  let logp = z[i] - lse[row];
  let p = exp(logp);
  // p * logp is 0 where p underflows (also for -inf logits).
  dz[i] = select(-gh[row] * p * (logp + h[row]), 0.0, p == 0.0);
}
`;

/** log p(id) = z[id] - lse per row (ids i32); writes lse for the backward. */
export const tokenLogProbForwardKernel = /* wgsl */ `
${paramsBlock(3)}
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse_out: array<f32>;
${onlineLse}
${rowHeader}
  let a = row_stats(row, v, lid);
  if (lid == 0u) {
    let lse = a.m + log(a.s);
    out[row] = z[row * v + u32(ids[row])] - lse;
    lse_out[row] = lse;
  }
}
`;

/** dz = g * (onehot(id) - p); one invocation per element. Params: rows, V. */
export const tokenLogProbBackwardKernel = /* wgsl */ `
${paramsBlock(2)}
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read> lse: array<f32>;
@group(0) @binding(4) var<storage, read> g: array<f32>;
@group(0) @binding(5) var<storage, read_write> dz: array<f32>;
${flatIndex}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flat_index(gid, nwg);
  let v = pu(1u);
  if (i >= pu(0u) * v) { return; }
  let row = i / v;
  let p = exp(z[i] - lse[row]);
  dz[i] = g[row] * (select(0.0, 1.0, i % v == u32(ids[row])) - p);
}
`;

/** Rows at most this wide use one invocation per row (no workgroup tree). */
export const SHORT_ROW = 512;

const shortStats = /* wgsl */ `
struct Stats { lse: f32, h: f32 }
// logsumexp and entropy of row r, with the entropy term relative to the max
fn stats(r: u32, v: u32) -> Stats {
  var m = -3.402823e38;
  for (var j = 0u; j < v; j++) { m = max(m, z[r * v + j]); }
  var s = 0.0; var t = 0.0;
  for (var j = 0u; j < v; j++) {
    let d = z[r * v + j] - m;
    let e = exp(d);
    if (e > 0.0) { s += e; t += e * d; }
  }
  return Stats(m + log(s), max(log(s) - t / s, 0.0));
}
`;

const shortHeader = /* wgsl */ `
${flatIndex}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = flat_index(gid, nwg);
  let v = pu(1u);
  if (r >= pu(0u)) { return; }
  let st = stats(r, v);
`;

/** Short-row variants, one invocation per row. Params: rows, V. */
export function shortSoftmaxKernel(log: boolean): string {
  return /* wgsl */ `
${paramsBlock(2)}
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${shortStats}
${shortHeader}
  for (var j = 0u; j < v; j++) {
    let y = z[r * v + j] - st.lse;
    out[r * v + j] = ${log ? "y" : "exp(y)"};
  }
}
`;
}

export const shortEntropyForwardKernel = /* wgsl */ `
${paramsBlock(2)}
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read_write> h: array<f32>;
@group(0) @binding(3) var<storage, read_write> lse_out: array<f32>;
${shortStats}
${shortHeader}
  h[r] = st.h;
  lse_out[r] = st.lse;
}
`;

export const shortTokenLogProbForwardKernel = /* wgsl */ `
${paramsBlock(2)}
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse_out: array<f32>;
${shortStats}
${shortHeader}
  out[r] = z[r * v + u32(ids[r])] - st.lse;
  lse_out[r] = st.lse;
}
`;
