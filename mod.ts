/**
 * A tensor engine with tape autograd whose kernels are WGSL run through
 * WebGPU, for entropy minimization of Qwen models.
 *
 * @example
 * ```ts
 * import { initDevice, matmul, sum, Tensor, tidy } from "./mod.ts";
 *
 * await initDevice();
 * const w = Tensor.randn([3, 2], { seed: 1, requiresGrad: true });
 * const x = Tensor.from([1, 2, 3, 4, 5, 6], [2, 3]);
 * const loss = tidy(() => {
 *   const l = sum(matmul(x, w));
 *   l.backward();
 *   return l;
 * });
 * console.log(await loss.item(), await w.grad!.toArray());
 * ```
 * @module
 */
export {
  Device,
  device,
  DeviceError,
  initDevice,
  WebGPUUnavailableError,
} from "./engine/device.ts";
export type { DeviceInfo } from "./engine/device.ts";
export { type DType, numel, Tensor, type TensorOptions } from "./engine/tensor.ts";
export { keep, noGrad, tidy } from "./engine/scope.ts";
export { backward } from "./engine/autograd.ts";
export * from "./engine/ops/mod.ts";
export { AdamW, type AdamWOptions, clipGradNorm } from "./engine/optim.ts";
export { Rng } from "./engine/random.ts";
export * from "./engine/safetensors.ts";
