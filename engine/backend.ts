/**
 * Getting a WebGPU device: which wgpu backend to ask for, the adapter's real
 * limits and useful features, and the advice given when there is none.
 * @module
 */

/** Thrown when no WebGPU adapter can be had; the message says what to install. */
export class WebGPUUnavailableError extends Error {
  constructor(detail: string) {
    super(
      `No usable WebGPU adapter (${detail}).\n` +
        "  Debian/Ubuntu without a GPU: sudo apt-get update && sudo apt-get install mesa-vulkan-drivers\n" +
        "  With a GPU: install its Vulkan (Linux), Metal (macOS) or D3D12 (Windows) driver.\n" +
        "  A backend can be forced with DENO_WEBGPU_BACKEND=vulkan|gl.",
    );
    this.name = "WebGPUUnavailableError";
  }
}

/** What the engine learned about the adapter it runs on. */
export interface DeviceInfo {
  description: string;
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
  maxComputeWorkgroupStorageSize: number;
  maxStorageBuffersPerShaderStage: number;
  maxComputeWorkgroupsPerDimension: number;
  shaderF16: boolean;
  subgroups: boolean;
  timestampQuery: boolean;
}

/** Requests the adapter and a device with the adapter's real limits and useful features. */
export async function requestGpu(): Promise<{ gpu: GPUDevice; info: DeviceInfo }> {
  if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
    throw new WebGPUUnavailableError("navigator.gpu is missing in this runtime");
  }
  // Deno only (a browser picks its own): the backend must be chosen before the first adapter
  if (typeof Deno !== "undefined") (await import("./backend_deno.ts")).selectBackend();
  let adapter: GPUAdapter | null = null;
  try {
    adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch (e) {
    throw new WebGPUUnavailableError(`requestAdapter failed: ${(e as Error).message}`);
  }
  if (!adapter) throw new WebGPUUnavailableError("requestAdapter returned null");
  const wanted = (["shader-f16", "subgroups", "timestamp-query"] as GPUFeatureName[])
    .filter((f) => adapter!.features.has(f));
  const l = adapter.limits;
  const requiredLimits: Record<string, number> = {
    maxBufferSize: l.maxBufferSize,
    maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
    maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
    maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
    maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
    maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
  };
  const gpu = await adapter.requestDevice({ requiredFeatures: wanted, requiredLimits });
  const info: DeviceInfo = {
    // a browser may leave the description empty (Chromium's SwiftShader: vendor "google")
    description: adapter.info?.description ||
      [adapter.info?.vendor, adapter.info?.architecture].filter((s) => s).join(" ") ||
      "unknown adapter",
    maxBufferSize: l.maxBufferSize,
    maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
    maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
    maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
    maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
    shaderF16: wanted.includes("shader-f16"),
    subgroups: wanted.includes("subgroups"),
    timestampQuery: wanted.includes("timestamp-query"),
  };
  return { gpu, info };
}
