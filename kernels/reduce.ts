/**
 * Reductions over one axis of a tensor viewed as (outer, n, inner).
 * @module
 */
import { WG } from "./common.ts";
import { declareKernel, memoKernel } from "./declare.ts";

export const RW = 64;

/** Workgroup-wide tree reduction of `red[]` with the combine expression over `x` and `y`. */
export function treeReduce(combine: string, size = RW): string {
  return /* wgsl */ `
  workgroupBarrier();
  for (var s = ${size / 2}u; s > 0u; s >>= 1u) {
    if (lid.x < s) { let x = red[lid.x]; let y = red[lid.x + s]; red[lid.x] = ${combine}; }
    workgroupBarrier();
  }`;
}

type ReduceOp = "sum" | "max" | "sumsq";
const INIT = { sum: "0.0", sumsq: "0.0", max: "-3.402823e38" };
const PARAMS = { outer: "u32", n: "u32", inner: "u32" } as const;

/**
 * One workgroup per output, RW threads striding over n, then a tree:
 * out[o*inner+i] = reduce_k src[(o*n+k)*inner+i]. Launched over outputs (rows).
 */
export const reduceKernel = memoKernel((op: ReduceOp) => {
  const combine = op === "max" ? "max(x, y)" : "x + y";
  const term = op === "sumsq" ? "v * v" : "v";
  return declareKernel({
    label: op,
    inputs: { src: "f32" },
    outputs: { out: "f32" },
    params: PARAMS,
    grid: "rows",
    workgroupSize: [RW],
    helpers: `var<workgroup> red: array<f32, ${RW}>;`,
    main: `
  let j = row_index(wid, nwg);
  let outer = params.outer; let n = params.n; let inner = params.inner;
  let valid = j < outer * inner;
  let o = j / max(inner, 1u); let i = j % max(inner, 1u);
  var acc = ${INIT[op]};
  if (valid) {
    for (var k = lid.x; k < n; k += ${RW}u) {
      let v = src[(o * n + k) * inner + i];
      let x = acc; let y = ${term};
      acc = ${combine};
    }
  }
  red[lid.x] = acc;
  ${treeReduce(combine)}
  if (valid && lid.x == 0u) { out[j] = red[0]; }`,
  });
});

/**
 * The same reduction with one invocation per output looping over n: cheaper
 * than a workgroup tree when there are many outputs or short rows (and on CPU
 * adapters, where barriers are costly). Launched over outputs (elements).
 */
export const reduceLoopKernel = memoKernel((op: ReduceOp) => {
  const step = op === "max" ? "acc = max(acc, v);" : op === "sumsq" ? "acc += v * v;" : "acc += v;";
  return declareKernel({
    label: op,
    inputs: { src: "f32" },
    outputs: { out: "f32" },
    params: PARAMS,
    grid: "elements",
    workgroupSize: [WG],
    main: `
  let j = flat_index(gid, nwg);
  let outer = params.outer; let n = params.n; let inner = params.inner;
  if (j >= outer * inner) { return; }
  let o = j / inner; let i = j % inner;
  var acc = ${INIT[op]};
  for (var k = 0u; k < n; k++) {
    let v = src[(o * n + k) * inner + i];
    ${step}
  }
  out[j] = acc;`,
  });
});
