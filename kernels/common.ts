/**
 * Shared WGSL pieces and sizes. Parameters and bindings come from each
 * kernel's declaration (declare.ts): sizes travel in a uniform, so one
 * pipeline serves every shape.
 * @module
 */

/** Workgroup size of 1-D element-parallel kernels. */
export const WG = 64;

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
