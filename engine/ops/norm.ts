/** Fused RMSNorm and RoPE: forward, backward and CPU reference. @module */
import {
  addRmsNormKernel,
  rmsNormBackwardKernel,
  rmsNormForwardKernel,
  ropeKernel,
} from "../../kernels/norm_rope.ts";
import { record } from "../autograd.ts";
import { Tensor } from "../tensor.ts";
import { launch } from "../launch.ts";
import { mapRows, type NDArray } from "./_reference.ts";
import { mul } from "./elementwise.ts";
import { sumTo } from "./_raw.ts";

/** x * rsqrt(mean(x², -1) + eps) * weight over the last axis; weight (C). */
export function rmsNorm(x: Tensor, weight: Tensor, eps: number): Tensor {
  const C = x.shape.at(-1)!;
  if (weight.shape.length !== 1 || weight.shape[0] !== C) {
    throw new Error(
      `rmsNorm: weight [${weight.shape}] does not match the last axis of [${x.shape}]`,
    );
  }
  if (x.dtype !== "f32" || weight.dtype !== "f32") throw new Error("rmsNorm: expects f32");
  const rows = x.size / C;
  const y = Tensor.empty(x.shape);
  const r = Tensor.empty([rows]);
  launch(rmsNormForwardKernel, { x, w: weight, y, rstd: r }, { rows, C, eps }, rows);
  return record(y, {
    op: "rmsNorm",
    inputs: [x, weight],
    saved: [r],
    backward: (g) => {
      let gx: Tensor | null = null;
      if (x.requiresGrad) {
        gx = Tensor.empty(x.shape);
        // dx = r * (w g - x r^2 mean(w g x))
        launch(rmsNormBackwardKernel, { x, w: weight, rstd: r, g, dx: gx }, { rows, C }, rows);
      }
      let gw: Tensor | null = null;
      if (weight.requiresGrad) {
        // dw = sum over rows of g * x * r
        const xr = mul(x, r.view([...x.shape.slice(0, -1), 1]));
        gw = sumTo(mul(g, xr), [C]);
      }
      return [gx, gw];
    },
  });
}

/**
 * [x + y, rmsNorm(x + y, weight)] in one dispatch, the same bits as add then
 * rmsNorm: the residual stream and the next sublayer's input when decoding.
 * No tape (inference); x and y of one shape (..., C).
 */
export function addRmsNorm(x: Tensor, y: Tensor, weight: Tensor, eps: number): [Tensor, Tensor] {
  const C = x.shape.at(-1)!;
  if (x.shape.join() !== y.shape.join() || weight.size !== C || x.dtype !== "f32") {
    throw new Error(`addRmsNorm: x [${x.shape}], y [${y.shape}], weight [${weight.shape}]`);
  }
  const rows = x.size / C;
  const s = Tensor.empty(x.shape);
  const out = Tensor.empty(x.shape);
  launch(addRmsNormKernel, { x, y, w: weight, s, out }, { rows, C, eps }, rows);
  return [s, out];
}

/** x * cos + rotate_half(x) * sin; x (B, H, T, D), cos and sin (B, 1, T, D) with equal halves. */
export function rope(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  const [B, H, T, D] = x.shape;
  if (
    x.shape.length !== 4 || cos.shape.join() !== [B, 1, T, D].join() ||
    sin.shape.join() !== cos.shape.join()
  ) {
    throw new Error(
      `rope: x [${x.shape}] needs cos and sin of shape [${B},1,${T},${D}], got [${cos.shape}]`,
    );
  }
  const y = Tensor.empty(x.shape);
  launch(ropeKernel, { x, cosT: cos, sinT: sin, out: y }, { n: x.size, H, T, D, sign: 1 }, x.size);
  return record(y, {
    op: "rope",
    inputs: [x],
    keeps: [cos, sin],
    // dx = g cos - rotate_half(g) sin: the same kernel with -sin
    backward: (g) => {
      const gx = Tensor.empty(x.shape);
      launch(
        ropeKernel,
        { x: g, cosT: cos, sinT: sin, out: gx },
        {
          n: x.size,
          H,
          T,
          D,
          sign: -1,
        },
        x.size,
        "rope_bwd",
      );
      return [gx];
    },
  });
}

export const normReference = {
  rmsNorm: (x: NDArray, w: NDArray, eps: number): NDArray =>
    mapRows(x, (row) => {
      const r = 1 / Math.sqrt(row.reduce((s, v) => s + v * v, 0) / row.length + eps);
      return row.map((v, j) => v * r * w.data[j]);
    }),
  rope: (x: NDArray, cos: NDArray, sin: NDArray): NDArray => {
    const [, H, T, D] = x.shape;
    const h = D / 2;
    const data = x.data.map((v, i) => {
      const d = i % D;
      const t = Math.floor(i / D) % T;
      const b = Math.floor(i / (D * T * H));
      const rot = d < h ? -x.data[i + h] : x.data[i - h];
      const c = (b * T + t) * D + d;
      return v * cos.data[c] + rot * sin.data[c];
    });
    return { shape: x.shape, data };
  },
};
