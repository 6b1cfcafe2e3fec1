/** Fused RMSNorm and RoPE kernels. @module */
import { WG } from "./common.ts";
import { declareKernel } from "./declare.ts";

/** RMSNorm forward, one invocation per row: r = rsqrt(mean(x^2) + eps), y = x * r * w. */
export const rmsNormForwardKernel = declareKernel({
  label: "rms_norm",
  inputs: { x: "f32", w: "f32" },
  outputs: { y: "f32", rstd: "f32" },
  params: { rows: "u32", C: "u32", eps: "f32" },
  grid: "elements",
  workgroupSize: [WG],
  main: `
  let row = flat_index(gid, nwg);
  let C = params.C;
  if (row >= params.rows) { return; }
  let base = row * C;
  var ss = 0.0;
  for (var j = 0u; j < C; j++) { ss += x[base + j] * x[base + j]; }
  let r = inverseSqrt(ss / f32(C) + params.eps);
  for (var j = 0u; j < C; j++) { y[base + j] = x[base + j] * r * w[j]; }
  rstd[row] = r;`,
});

/**
 * Residual add then RMSNorm in one pass (inference): s = x + y, out = rmsNorm(s) * w.
 * The same arithmetic in the same order as the add and rms_norm kernels.
 */
export const addRmsNormKernel = declareKernel({
  label: "add_rms_norm",
  inputs: { x: "f32", y: "f32", w: "f32" },
  outputs: { s: "f32", out: "f32" },
  params: { rows: "u32", C: "u32", eps: "f32" },
  grid: "elements",
  workgroupSize: [WG],
  main: `
  let row = flat_index(gid, nwg);
  let C = params.C;
  if (row >= params.rows) { return; }
  let base = row * C;
  var ss = 0.0;
  for (var j = 0u; j < C; j++) {
    let v = x[base + j] + y[base + j];
    s[base + j] = v;
    ss += v * v;
  }
  let r = inverseSqrt(ss / f32(C) + params.eps);
  for (var j = 0u; j < C; j++) { out[base + j] = s[base + j] * r * w[j]; }`,
});

/** RMSNorm input gradient, one invocation per row: dx = r * (w*g - x * r^2 * mean(w*g*x)). */
export const rmsNormBackwardKernel = declareKernel({
  label: "rms_norm_bwd",
  inputs: { x: "f32", w: "f32", rstd: "f32", g: "f32" },
  outputs: { dx: "f32" },
  params: { rows: "u32", C: "u32" },
  grid: "elements",
  workgroupSize: [WG],
  main: `
  let row = flat_index(gid, nwg);
  let C = params.C;
  if (row >= params.rows) { return; }
  let base = row * C;
  let r = rstd[row];
  var dot = 0.0;
  for (var j = 0u; j < C; j++) { dot += w[j] * g[base + j] * x[base + j]; }
  let k = r * r * dot / f32(C);
  for (var j = 0u; j < C; j++) { dx[base + j] = r * (w[j] * g[base + j] - x[base + j] * k); }`,
});

/**
 * RoPE: out = x * cos + rotate_half(x) * sin * sign, rotate_half(x) = [-x2, x1].
 * x (B, H, T, D); cos, sin (B, 1, T, D) with equal halves. sign -1 gives the
 * backward (rotate_half's transpose is -rotate_half and sin's halves are equal).
 */
export const ropeKernel = declareKernel({
  label: "rope",
  inputs: { x: "f32", cosT: "f32", sinT: "f32" },
  outputs: { out: "f32" },
  params: { n: "u32", H: "u32", T: "u32", D: "u32", sign: "f32" },
  grid: "elements",
  workgroupSize: [WG],
  main: `
  let i = flat_index(gid, nwg);
  if (i >= params.n) { return; }
  let H = params.H; let T = params.T; let D = params.D;
  let d = i % D;
  let t = (i / D) % T;
  let b = i / (D * T * H);
  let half = D / 2u;
  let rot = select(x[i - half], -x[i + half], d < half);
  let c = (b * T + t) * D + d;
  out[i] = x[i] * cosT[c] + rot * sinT[c] * params.sign;`,
});
