/** Small helpers ops use to launch kernels. @module */
import { device, type Param } from "../device.ts";
import { grid1d } from "../../kernels/common.ts";
/** A tensor, or a raw buffer such as Device.errorBuffer. */
type Bindable = { buffer: GPUBuffer };

/** Dispatches a 1-D element-parallel kernel over n invocations. */
export function launch1d(
  wgsl: string,
  tensors: Bindable[],
  params: Param[],
  n: number,
  label: string,
): void {
  if (n === 0) return;
  const dev = device();
  dev.dispatch({
    wgsl,
    buffers: tensors.map((t) => t.buffer),
    params,
    workgroups: grid1d(n, dev.info.maxComputeWorkgroupsPerDimension),
    label,
  });
}

/** Dispatches one workgroup per row (rows folded into y past the x limit); `groupsX` is appended. */
export function launchRows(
  wgsl: string,
  tensors: Bindable[],
  params: Param[],
  rows: number,
  label: string,
): void {
  if (rows === 0) return;
  const dev = device();
  const max = dev.info.maxComputeWorkgroupsPerDimension;
  const y = Math.ceil(rows / max);
  const x = Math.ceil(rows / y);
  dev.dispatch({
    wgsl,
    buffers: tensors.map((t) => t.buffer),
    params: [...params, x],
    workgroups: [x, y],
    label,
  });
}

/** Memoises kernel source builders so hot paths do not rebuild WGSL strings. */
// deno-lint-ignore no-explicit-any
export function memo<A extends any[]>(
  build: (...args: A) => string,
): (...args: A) => string {
  const cache = new Map<string, string>();
  return (...args: A) => {
    const key = args.join("|");
    let s = cache.get(key);
    if (s === undefined) cache.set(key, s = build(...args));
    return s;
  };
}
