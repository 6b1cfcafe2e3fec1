/**
 * Launching a declared kernel (kernels/declare.ts) by name: tensors bind to
 * the declared inputs and outputs, numbers fill the declared parameters in
 * their types, and the grid follows the declaration. The one way every op,
 * the sampler, EM-INF and the optimizer put work on the GPU.
 * @module
 */
import type { Kernel } from "../kernels/declare.ts";
import { device } from "./device.ts";

/** Anything with a GPU buffer: a Tensor, or a raw buffer such as Device.errorBuffer. */
export type Bindable = { buffer: GPUBuffer };

/** Values of a kernel's parameters: a number per scalar, a list per `u32[N]`. */
export type ParamValues<P extends string> = { [K in P]: number | readonly number[] };

/**
 * Dispatches `kernel` over `count`: elements (one invocation each), rows (one
 * workgroup each) or, for `workgroups` kernels, the workgroup counts.
 */
export function launch<I extends string, O extends string, P extends string>(
  kernel: Kernel<I, O, P>,
  buffers: { [K in I | O]: Bindable },
  params: ParamValues<P>,
  count: number | readonly [number, number?, number?],
  /** Names the dispatch for profiling (default: the kernel's label). */
  label: string = kernel.label,
): void {
  const dev = device();
  const words = new Uint32Array(kernel.paramWords);
  const f32 = new Float32Array(words.buffer);
  const i32 = new Int32Array(words.buffer);
  for (const slot of kernel.slots) {
    const v = (params as Record<string, number | readonly number[]>)[slot.name];
    if (v === undefined) throw new Error(`${kernel.label}: parameter ${slot.name} is missing`);
    if (slot.length > 1 || typeof v !== "number") {
      const list = typeof v === "number" ? [v] : v;
      if (list.length > slot.length) {
        throw new Error(`${kernel.label}: ${slot.name} has ${list.length} > ${slot.length} values`);
      }
      list.forEach((x, k) => words[slot.word + k] = x);
    } else if (slot.type === "f32") f32[slot.word] = v;
    else if (slot.type === "i32") i32[slot.word] = v;
    else words[slot.word] = v;
  }
  const names = [...Object.keys(kernel.inputs), ...Object.keys(kernel.outputs)] as (I | O)[];
  const max = dev.info.maxComputeWorkgroupsPerDimension;
  let workgroups: [number, number?, number?];
  if (kernel.grid === "workgroups") {
    if (typeof count === "number") throw new Error(`${kernel.label}: pass workgroup counts`);
    workgroups = [...count];
  } else {
    const n = typeof count === "number" ? count : count[0];
    if (n === 0) return;
    const groups = kernel.grid === "rows" ? n : Math.ceil(n / kernel.workgroupSize[0]);
    const y = Math.ceil(groups / max);
    workgroups = [Math.ceil(groups / y), y];
  }
  dev.dispatch({
    wgsl: kernel.wgsl,
    buffers: names.map((name) => {
      const b = buffers[name];
      if (!b) throw new Error(`${kernel.label}: binding ${name} is missing`);
      return b.buffer;
    }),
    words,
    workgroups,
    label,
  });
}
