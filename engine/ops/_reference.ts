/**
 * CPU reference arrays in float64: the oracle every GPU op is tested against
 * and the function finite differences are taken of.
 * @module
 */
import { broadcastShapes, broadcastStrides, stridesOf } from "./_shape.ts";

export interface NDArray {
  shape: number[];
  data: Float64Array;
}

/** Elementwise map with broadcasting over any number of inputs. */
export function mapN(inputs: NDArray[], f: (...v: number[]) => number): NDArray {
  const shape = inputs.map((x) => x.shape).reduce((a, b) => broadcastShapes(a, b));
  const strides = inputs.map((x) => broadcastStrides(x.shape, shape));
  const outStrides = stridesOf(shape);
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float64Array(n);
  const vals = new Array(inputs.length);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < inputs.length; k++) {
      let off = 0;
      let rem = i;
      for (let d = 0; d < shape.length; d++) {
        const idx = Math.floor(rem / outStrides[d]);
        rem -= idx * outStrides[d];
        off += idx * strides[k][d];
      }
      vals[k] = inputs[k].data[off];
    }
    out[i] = f(...vals);
  }
  return { shape, data: out };
}

/** Reduction over one axis, keeping it as size 1 when keepdim. */
export function reduceAxis(
  x: NDArray,
  axis: number,
  f: (acc: number, v: number) => number,
  init: number,
  keepdim = false,
): NDArray {
  const outer = x.shape.slice(0, axis).reduce((a, b) => a * b, 1);
  const n = x.shape[axis];
  const inner = x.shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const out = new Float64Array(outer * inner).fill(init);
  for (let o = 0; o < outer; o++) {
    for (let k = 0; k < n; k++) {
      for (let i = 0; i < inner; i++) {
        out[o * inner + i] = f(out[o * inner + i], x.data[(o * n + k) * inner + i]);
      }
    }
  }
  const shape = keepdim
    ? x.shape.map((d, i) => (i === axis ? 1 : d))
    : x.shape.filter((_, i) => i !== axis);
  return { shape, data: out };
}

/** Row-wise map over the last axis: a row to a row, or to one number (the axis is dropped). */
export function mapRows(x: NDArray, f: (row: Float64Array) => ArrayLike<number> | number): NDArray {
  const v = x.shape.at(-1)!;
  const rows = x.data.length / v;
  const outs: (ArrayLike<number> | number)[] = [];
  for (let r = 0; r < rows; r++) outs.push(f(x.data.subarray(r * v, (r + 1) * v)));
  if (typeof outs[0] === "number" || rows === 0) {
    return { shape: x.shape.slice(0, -1), data: Float64Array.from(outs as number[]) };
  }
  const w = (outs[0] as ArrayLike<number>).length;
  const data = new Float64Array(rows * w);
  outs.forEach((o, r) => data.set(o as ArrayLike<number>, r * w));
  return { shape: [...x.shape.slice(0, -1), w], data };
}

/** log(sum(exp(row))) computed stably. */
export function logSumExp(row: ArrayLike<number>): number {
  let m = -Infinity;
  for (let i = 0; i < row.length; i++) m = Math.max(m, row[i]);
  let s = 0;
  for (let i = 0; i < row.length; i++) s += Math.exp(row[i] - m);
  return m + Math.log(s);
}
