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

/** Where the Vulkan loader finds installed drivers (ICD manifests) on Linux. */
const VULKAN_ICD_DIRS = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"];

/**
 * The wgpu backends to ask for: the user's DENO_WEBGPU_BACKEND when set, else
 * only Vulkan on Linux when a Vulkan driver is installed, else all (undefined).
 * Why not all: with GL enabled every Deno worker also opens an EGL display, and
 * Mesa's GL teardown corrupts the heap at exit now and then (measured: `deno
 * test` over 30 GPU test modules aborted in 3 of 25 runs on GL, 0 of 25 on Vulkan).
 */
export function chooseBackend(
  os: string,
  userChoice: string | undefined,
  vulkanDrivers: string[],
): string | undefined {
  if (userChoice) return userChoice;
  if (os === "linux" && vulkanDrivers.some((f) => f.endsWith(".json"))) return "vulkan";
  return undefined;
}

/** Applies `chooseBackend` to this process before wgpu creates its instance (Deno only). */
function selectBackend(): void {
  if (typeof Deno === "undefined") return; // a browser picks its own
  try {
    const drivers: string[] = [];
    for (const dir of VULKAN_ICD_DIRS) {
      try {
        for (const e of Deno.readDirSync(dir)) drivers.push(e.name);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    }
    // Drivers named explicitly to the Vulkan loader count as installed too.
    for (const v of ["VK_DRIVER_FILES", "VK_ICD_FILENAMES"]) {
      drivers.push(...(Deno.env.get(v) ?? "").split(":").filter((f) => f));
    }
    const current = Deno.env.get("DENO_WEBGPU_BACKEND");
    const backend = chooseBackend(Deno.build.os, current, drivers);
    if (backend && backend !== current) Deno.env.set("DENO_WEBGPU_BACKEND", backend);
  } catch {
    // Without --allow-env/--allow-read wgpu picks among all backends.
  }
}

/** Requests the adapter and a device with the adapter's real limits and useful features. */
export async function requestGpu(): Promise<{ gpu: GPUDevice; info: DeviceInfo }> {
  if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
    throw new WebGPUUnavailableError("navigator.gpu is missing in this runtime");
  }
  selectBackend();
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
    description: adapter.info?.description || adapter.info?.vendor || "unknown adapter",
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
