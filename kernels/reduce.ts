/**
 * Reductions over one axis of a tensor viewed as (outer, n, inner):
 * one workgroup per output element, RW threads striding over n, then a tree.
 * @module
 */
import { flatIndex, paramsBlock, WG } from "./common.ts";

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

/** Params: outer, n, inner, groupsX. out[o*inner+i] = reduce_k x[(o*n+k)*inner+i]. */
export function reduceKernel(op: "sum" | "max" | "sumsq"): string {
  const init = op === "max" ? "-3.402823e38" : "0.0";
  const combine = op === "max" ? "max(x, y)" : "x + y";
  const term = op === "sumsq" ? "v * v" : "v";
  return /* wgsl */ `
${paramsBlock(4)}
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
var<workgroup> red: array<f32, ${RW}>;
@compute @workgroup_size(${RW})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let j = wid.x + wid.y * pu(3u);
  let outer = pu(0u); let n = pu(1u); let inner = pu(2u);
  let valid = j < outer * inner;
  let o = j / max(inner, 1u); let i = j % max(inner, 1u);
  var acc = ${init};
  if (valid) {
    for (var k = lid.x; k < n; k += ${RW}u) {
      let v = src[(o * n + k) * inner + i];
      let x = acc; let y = ${term};
      acc = ${combine};
    }
  }
  red[lid.x] = acc;
  ${treeReduce(combine)}
  if (valid && lid.x == 0u) { out[j] = red[0]; }
}
`;
}

/**
 * The same reduction with one invocation per output looping over n: cheaper
 * than a workgroup tree when there are many outputs or short rows (and on CPU
 * adapters, where barriers are costly). Params: outer, n, inner, count.
 */
export function reduceLoopKernel(op: "sum" | "max" | "sumsq"): string {
  const init = op === "max" ? "-3.402823e38" : "0.0";
  const step = op === "max" ? "acc = max(acc, v);" : op === "sumsq" ? "acc += v * v;" : "acc += v;";
  return /* wgsl */ `
${paramsBlock(4)}
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${flatIndex}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let j = flat_index(gid, nwg);
  let outer = pu(0u); let n = pu(1u); let inner = pu(2u);
  if (j >= outer * inner) { return; }
  let o = j / inner; let i = j % inner;
  var acc = ${init};
  for (var k = 0u; k < n; k++) {
    let v = src[(o * n + k) * inner + i];
    ${step}
  }
  out[j] = acc;
}
`;
}
