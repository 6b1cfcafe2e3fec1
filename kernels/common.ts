/**
 * Shared WGSL pieces. Every kernel binds a uniform parameter block at
 * binding 0, read through `pu(i)` (u32), `pf(i)` (f32) and `pi(i)` (i32),
 * so one pipeline serves every shape.
 * @module
 */

/** The params uniform declaration and accessors; `words` is how many u32 slots the kernel reads. */
export function paramsBlock(words: number): string {
  const n = Math.max(1, Math.ceil(words / 4));
  return /* wgsl */ `
struct Params { p: array<vec4<u32>, ${n}> }
@group(0) @binding(0) var<uniform> params: Params;
fn pu(i: u32) -> u32 { return params.p[i / 4u][i % 4u]; }
fn pf(i: u32) -> f32 { return bitcast<f32>(pu(i)); }
fn pi(i: u32) -> i32 { return bitcast<i32>(pu(i)); }
`;
}

/** Workgroup size of 1-D element-parallel kernels. */
export const WG = 64;

/** The flat invocation index of a 1-D kernel dispatched as (x, y) workgroups of WG. */
export const flatIndex = /* wgsl */ `
fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return gid.x + gid.y * nwg.x * ${WG}u;
}
`;

/** Grid of workgroups for n invocations of a 1-D kernel (folded into y past the x limit). */
export function grid1d(n: number, maxPerDim = 65535): [number, number] {
  const groups = Math.max(1, Math.ceil(n / WG));
  if (groups <= maxPerDim) return [groups, 1];
  const y = Math.ceil(groups / maxPerDim);
  return [Math.ceil(groups / y), y];
}

/** Maximum tensor rank handled by strided kernels. */
export const MAX_RANK = 6;

/**
 * `wg_reduce(x, lid, is_max)`: sum (or max) over a workgroup of `size`
 * invocations, returned as a uniform value (usable in control flow around barriers).
 */
export function workgroupReduce(size: number): string {
  return /* wgsl */ `
var<workgroup> red: array<f32, ${size}>;
var<workgroup> bcast: f32;
fn wg_reduce(x: f32, lid: u32, is_max: bool) -> f32 {
  red[lid] = x;
  workgroupBarrier();
  for (var s = ${size / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = select(red[lid] + red[lid + s], max(red[lid], red[lid + s]), is_max); }
    workgroupBarrier();
  }
  if (lid == 0u) { bcast = red[0]; }
  return workgroupUniformLoad(&bcast);
}
`;
}
