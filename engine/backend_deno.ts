/**
 * Deno's wgpu backend choice, applied through DENO_WEBGPU_BACKEND before the
 * first adapter is requested (backend.ts imports this only under Deno).
 * @module
 */
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
export function selectBackend(): void {
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
