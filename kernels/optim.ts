/** AdamW update, in place on (param, m, v). @module */
import { WG } from "./common.ts";
import { declareKernel } from "./declare.ts";

/** torch.optim.AdamW; stepSize = lr/(1-b1^t) and bc2Sqrt = sqrt(1-b2^t) come from float64. */
export const adamwKernel = declareKernel({
  label: "adamw",
  inputs: { g: "f32" },
  outputs: { p: "f32", m: "f32", v: "f32" },
  params: {
    n: "u32",
    lr: "f32",
    beta1: "f32",
    beta2: "f32",
    eps: "f32",
    weightDecay: "f32",
    stepSize: "f32",
    bc2Sqrt: "f32",
  },
  grid: "elements",
  workgroupSize: [WG],
  main: `
  let i = flat_index(gid, nwg);
  if (i >= params.n) { return; }
  let b1 = params.beta1; let b2 = params.beta2;
  let gi = g[i];
  var w = p[i] * (1.0 - params.lr * params.weightDecay); // decoupled weight decay
  let mi = b1 * m[i] + (1.0 - b1) * gi;
  let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
  m[i] = mi; v[i] = vi;
  p[i] = w - params.stepSize * mi / (sqrt(vi) / params.bc2Sqrt + params.eps);`,
});
