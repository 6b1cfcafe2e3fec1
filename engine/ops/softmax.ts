/**
 * Row ops over the last axis of logits: softmax, logSoftmax, the fused token
 * entropy and the fused log-prob of given token ids. One workgroup per row,
 * numerically stable at any width (kernels/rows.ts).
 * @module
 */
import {
  entropyBackwardKernel,
  type RowEpilogue,
  rowKernel,
  SHORT_ROW,
  tokenLogProbBackwardKernel,
  writesRows,
} from "../../kernels/rows.ts";
import { record } from "../autograd.ts";
import { type Bindable, launch } from "../launch.ts";
import { Tensor } from "../tensor.ts";
import { logSumExp, mapRows, type NDArray } from "./_reference.ts";
import { exp, mul, sub } from "./elementwise.ts";
import { sum } from "./reduce.ts";

/** Launches a row kernel: one invocation per row when rows are short, else one workgroup per row. */
function launchRowOp(
  epilogue: RowEpilogue,
  buffers: Record<string, Bindable>,
  rows: number,
  v: number,
): void {
  if (v > SHORT_ROW && v % 4 === 0 && writesRows(epilogue)) {
    // whole rows written as vec4s: z4 and out4 bind the same buffers as z and out
    const { z, out } = buffers;
    launch(rowKernel(epilogue, "long4"), { z, z4: z, out4: out }, { rows, v }, rows);
    return;
  }
  launch(rowKernel(epilogue, v <= SHORT_ROW ? "short" : "long"), buffers, { rows, v }, rows);
}

function rowsOf(x: Tensor, op: string): [number, number] {
  if (x.dtype !== "f32") throw new Error(`${op}: expects f32 logits, got ${x.dtype}`);
  if (x.shape.length === 0) throw new Error(`${op}: needs at least one axis`);
  const v = x.shape.at(-1)!;
  return [v === 0 ? 0 : x.size / v, v];
}

/** softmax over the last axis. */
export function softmax(x: Tensor): Tensor {
  const [rows, v] = rowsOf(x, "softmax");
  const y = Tensor.empty(x.shape);
  launchRowOp("softmax", { z: x, out: y }, rows, v);
  return record(y, {
    op: "softmax",
    inputs: [x],
    // dx = y * (g - sum(g * y))
    backward: (g) => [mul(y, sub(g, sum(mul(g, y), { axis: -1, keepdim: true })))],
  });
}

/** log(softmax(x)) over the last axis. */
export function logSoftmax(x: Tensor): Tensor {
  const [rows, v] = rowsOf(x, "logSoftmax");
  const y = Tensor.empty(x.shape);
  launchRowOp("logSoftmax", { z: x, out: y }, rows, v);
  return record(y, {
    op: "logSoftmax",
    inputs: [x],
    // dx = g - softmax(x) * sum(g)
    backward: (g) => [sub(g, mul(exp(y), sum(g, { axis: -1, keepdim: true })))],
  });
}

/**
 * Token entropy H = logsumexp(z) - sum softmax(z)·z of each row of logits:
 * (..., V) -> (...), in one pass, never log(0).
 */
export function entropy(logits: Tensor): Tensor {
  const [rows, v] = rowsOf(logits, "entropy");
  const h = Tensor.empty(logits.shape.slice(0, -1));
  const lse = Tensor.empty([rows]);
  launchRowOp("entropy", { z: logits, h, lse_out: lse }, rows, v);
  return record(h, {
    op: "entropy",
    inputs: [logits],
    saved: [lse],
    // dH/dz = -p * (log p + H)
    backward: (g) => {
      const dz = Tensor.empty(logits.shape);
      launch(entropyBackwardKernel, { z: logits, h, lse, gh: g, dz }, { rows, v }, rows * v);
      return [dz];
    },
  });
}

/** log softmax(z)[id] of each row: logits (..., V), ids (...) i32 -> (...). */
export function tokenLogProb(logits: Tensor, ids: Tensor): Tensor {
  const [rows, v] = rowsOf(logits, "tokenLogProb");
  if (ids.dtype !== "i32" || ids.size !== rows) {
    throw new Error(
      `tokenLogProb: ids must be i32 with ${rows} values for logits [${logits.shape}], got [${ids.shape}] ${ids.dtype}`,
    );
  }
  const out = Tensor.empty(logits.shape.slice(0, -1));
  const lse = Tensor.empty([rows]);
  launchRowOp("tokenLogProb", { z: logits, ids, out, lse_out: lse }, rows, v);
  return record(out, {
    op: "tokenLogProb",
    inputs: [logits],
    saved: [lse],
    keeps: [ids],
    // d/dz = g * (onehot(id) - p)
    backward: (g) => {
      const dz = Tensor.empty(logits.shape);
      launch(tokenLogProbBackwardKernel, { z: logits, ids, lse, g, dz }, { rows, v }, rows * v);
      return [dz];
    },
  });
}

export const softmaxReference = {
  softmax: (x: NDArray): NDArray =>
    mapRows(x, (r) => {
      const l = logSumExp(r);
      return r.map((z) => Math.exp(z - l));
    }),
  logSoftmax: (x: NDArray): NDArray =>
    mapRows(x, (r) => {
      const l = logSumExp(r);
      return r.map((z) => z - l);
    }),
  entropy: (x: NDArray): NDArray =>
    mapRows(x, (r) => {
      const l = logSumExp(r);
      let h = 0;
      for (const z of r) {
        const p = Math.exp(z - l);
        if (p > 0) h -= p * (z - l);
      }
      return h;
    }),
  tokenLogProb: (x: NDArray, ids: number[]): NDArray => {
    let row = 0;
    return mapRows(x, (r) => r[ids[row++]] - logSumExp(r));
  },
};
