/**
 * The WebGPU device: adapter and limits, a size-class buffer pool, a pipeline
 * cache keyed by WGSL source, one command encoder that ops append dispatches
 * to, batched submission and readback.
 *
 * Buffer reuse rule: a released buffer may still be read by dispatches that
 * are encoded but not yet submitted. It becomes reusable only once that
 * encoder is submitted; from then on WebGPU's queue order (submits and
 * `writeBuffer` run in call order) guarantees no later user sees a stale read.
 * This keeps reuse safe without waiting ~11 ms for `onSubmittedWorkDone`.
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

/** Applies `chooseBackend` to this process before wgpu creates its instance. */
function selectBackend(): void {
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

/** Thrown when the GPU device is lost or runs out of memory. */
export class DeviceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DeviceError";
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

const STORAGE_USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
const UNIFORM_USAGE = GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST;
const READ_USAGE = GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST;

/** Dispatches appended before an automatic submit. */
const DISPATCHES_PER_SUBMIT = 48;

/** Rounds a byte size up to its pool class: 256 B, then 2^k * {1, 1.25, 1.5, 1.75}. */
export function sizeClass(bytes: number): number {
  if (bytes <= 256) return 256;
  const p = 2 ** Math.floor(Math.log2(bytes));
  for (const f of [1, 1.25, 1.5, 1.75, 2]) {
    const c = Math.ceil((p * f) / 256) * 256;
    if (c >= bytes) return c;
  }
  return 2 * p;
}

/** i32 slots of Device.errorBuffer: what a kernel found wrong with its input. */
export const ERROR_SLOTS = { badTokenCount: 0, badTokenId: 1, vocabSize: 2 } as const;
const ERROR_BYTES = 16;

/** One dispatch: a WGSL source, its storage buffers in binding order, its parameter words and grid. */
export interface Dispatch {
  wgsl: string;
  /** Storage buffers bound at @binding(1..n) of @group(0); binding 0 is the params uniform. */
  buffers: GPUBuffer[];
  /** The uniform parameter block (engine/launch.ts packs it from the kernel's declaration). */
  words: Uint32Array<ArrayBuffer>;
  workgroups: [number, number?, number?];
  label?: string;
}

export class Device {
  readonly gpu: GPUDevice;
  readonly info: DeviceInfo;
  #free = new Map<string, GPUBuffer[]>(); // key `${usage}:${size}` -> reusable buffers
  #pending: [string, GPUBuffer][] = []; // released in the open encoder; free after submit
  #pipelines = new Map<string, GPUComputePipeline>();
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #dispatches = 0;
  #error: string | null = null;
  /** Bytes of storage buffers handed out and not yet released. */
  liveBytes = 0;
  /** Bytes held by the pool in total (live + cached). */
  pooledBytes = 0;
  /** The most live bytes since the last resetPeak() (memory accounting). */
  peakLiveBytes = 0;
  /** Submissions so far (for tests and benchmarks). */
  submits = 0;
  /** Readbacks (read calls) so far, each a wait of about 11 ms in Deno (for benchmarks). */
  reads = 0;
  /** Dispatches so far, by kernel label (for profiling). */
  readonly dispatchCounts: Map<string, number> = new Map();
  /** GPU milliseconds by kernel label, filled while profiling (timestamp-query). */
  readonly kernelMillis: Map<string, number> = new Map();
  #profile: { set: GPUQuerySet; labels: string[]; pending: Promise<void>[] } | null = null;
  /** Each pipeline's bind group layout, fetched once (getBindGroupLayout makes a new object). */
  readonly #layouts = new Map<GPUComputePipeline, GPUBindGroupLayout>();
  /**
   * Where kernels report bad input they find on the GPU (ERROR_SLOTS), read
   * with every readback: the next `read` throws naming the problem.
   */
  readonly errorBuffer: GPUBuffer;

  private constructor(gpu: GPUDevice, info: DeviceInfo) {
    this.gpu = gpu;
    this.info = info;
    this.errorBuffer = gpu.createBuffer({ size: ERROR_BYTES, usage: STORAGE_USAGE });
    gpu.lost.then((lost) => {
      if (lost.reason !== "destroyed") this.#error = `GPU device lost: ${lost.message}`;
    });
    gpu.addEventListener("uncapturederror", (e) => {
      const err = (e as GPUUncapturedErrorEvent).error;
      this.#error ??= err instanceof GPUOutOfMemoryError
        ? "GPU out of memory: reduce batch size, sequence length or model size"
        : `WebGPU error: ${err.message}`;
    });
  }

  /** Requests the adapter and a device with the adapter's real limits and useful features. */
  static async create(): Promise<Device> {
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
    return new Device(gpu, info);
  }

  #check(): void {
    if (this.#error) throw new DeviceError(this.#error);
  }

  #acquire(bytes: number, usage: number): GPUBuffer {
    this.#check();
    let size = sizeClass(bytes);
    // Rounding up must not push a bindable tensor past the binding limit.
    const maxBind = this.info.maxStorageBufferBindingSize;
    if (bytes <= maxBind && size > maxBind) size = Math.ceil(bytes / 256) * 256;
    const key = `${usage}:${size}`;
    const reuse = this.#free.get(key)?.pop();
    if (reuse) return reuse;
    if (size > this.info.maxBufferSize) {
      throw new DeviceError(
        `buffer of ${size} bytes exceeds this adapter's maxBufferSize (${this.info.maxBufferSize})`,
      );
    }
    try {
      const buf = this.gpu.createBuffer({ size, usage });
      if (usage === STORAGE_USAGE) this.pooledBytes += size;
      return buf;
    } catch (e) {
      throw new DeviceError(`could not allocate ${size} bytes on the GPU: ${(e as Error).message}`);
    }
  }

  #release(buf: GPUBuffer, usage: number): void {
    this.#pending.push([`${usage}:${buf.size}`, buf]);
    if (!this.#encoder) this.#recycle();
  }

  #recycle(): void {
    for (const [key, buf] of this.#pending) {
      let list = this.#free.get(key);
      if (!list) this.#free.set(key, list = []);
      list.push(buf);
    }
    this.#pending = [];
  }

  /** A storage buffer of at least `bytes` bytes (contents undefined). */
  alloc(bytes: number): GPUBuffer {
    const buf = this.#acquire(Math.max(bytes, 4), STORAGE_USAGE);
    this.liveBytes += buf.size;
    if (this.liveBytes > this.peakLiveBytes) this.peakLiveBytes = this.liveBytes;
    return buf;
  }

  /** Starts a new peak of live bytes from now. */
  resetPeak(): void {
    this.peakLiveBytes = this.liveBytes;
  }

  /** Returns a storage buffer to the pool. */
  free(buf: GPUBuffer): void {
    this.liveBytes -= buf.size;
    this.#release(buf, STORAGE_USAGE);
  }

  /** Uploads `data` into `buf` at byte offset 0 (queue-ordered after earlier submits). */
  write(buf: GPUBuffer, data: ArrayBufferView): void {
    // Order the write after every dispatch already encoded.
    if (this.#encoder) this.flush();
    this.gpu.queue.writeBuffer(
      buf,
      0,
      data.buffer as ArrayBuffer,
      data.byteOffset,
      data.byteLength,
    );
  }

  /** The compute pipeline for a WGSL source, compiled once. */
  pipeline(wgsl: string, label = "kernel"): GPUComputePipeline {
    let p = this.#pipelines.get(wgsl);
    if (!p) {
      const module = this.gpu.createShaderModule({ code: wgsl, label });
      p = this.gpu.createComputePipeline({
        layout: "auto",
        compute: { module, entryPoint: "main" },
        label,
      });
      this.#pipelines.set(wgsl, p);
    }
    return p;
  }

  /** Appends one dispatch to the open command encoder. */
  dispatch(d: Dispatch): void {
    this.#check();
    const label = d.label ?? "kernel";
    this.dispatchCounts.set(label, (this.dispatchCounts.get(label) ?? 0) + 1);
    const pipeline = this.pipeline(d.wgsl, d.label);
    const uniform = this.#acquire(Math.max(16, d.words.byteLength), UNIFORM_USAGE);
    this.gpu.queue.writeBuffer(uniform, 0, d.words);
    const maxBind = this.info.maxStorageBufferBindingSize;
    for (const b of d.buffers) {
      if (b.size > maxBind) {
        throw new DeviceError(
          `${d.label ?? "kernel"}: a ${b.size}-byte tensor exceeds this adapter's ` +
            `maxStorageBufferBindingSize (${maxBind} bytes); split it (by rows or vocabulary chunks)`,
        );
      }
    }
    const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: { buffer: uniform } }];
    d.buffers.forEach((buffer, i) => entries.push({ binding: i + 1, resource: { buffer } }));
    let layout = this.#layouts.get(pipeline);
    if (!layout) this.#layouts.set(pipeline, layout = pipeline.getBindGroupLayout(0));
    const bindGroup = this.gpu.createBindGroup({
      layout,
      entries,
    });
    this.#encoder ??= this.gpu.createCommandEncoder();
    const prof = this.#profile;
    if (prof) {
      // one pass per dispatch, bracketed by timestamps
      this.#pass?.end();
      if (prof.labels.length >= 2048) this.flush();
      this.#encoder ??= this.gpu.createCommandEncoder();
      const i = prof.labels.length;
      prof.labels.push(label);
      this.#pass = this.#encoder.beginComputePass({
        timestampWrites: {
          querySet: prof.set,
          beginningOfPassWriteIndex: 2 * i,
          endOfPassWriteIndex: 2 * i + 1,
        },
      });
    } else this.#pass ??= this.#encoder.beginComputePass();
    this.#pass.setPipeline(pipeline);
    this.#pass.setBindGroup(0, bindGroup);
    const [x, y = 1, z = 1] = d.workgroups;
    const max = this.info.maxComputeWorkgroupsPerDimension;
    if (x > max || y > max || z > max) {
      throw new DeviceError(
        `dispatch ${d.label ?? ""} of ${x}x${y}x${z} workgroups exceeds ${max}`,
      );
    }
    if (x > 0 && y > 0 && z > 0) this.#pass.dispatchWorkgroups(x, y, z);
    this.#release(uniform, UNIFORM_USAGE);
    if (++this.#dispatches >= DISPATCHES_PER_SUBMIT) this.flush();
  }

  /** Copies `bytes` bytes between storage buffers (encoded in order with dispatches). */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number): void {
    this.#pass?.end();
    this.#pass = null;
    this.#encoder ??= this.gpu.createCommandEncoder();
    this.#encoder.copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
  }

  /**
   * Starts (or stops) timing every dispatch on the GPU with timestamp queries,
   * accumulating milliseconds per kernel label in `kernelMillis`. Needs the
   * `timestamp-query` feature; slows execution (one pass per dispatch).
   */
  async profile(on: boolean): Promise<void> {
    if (on && !this.info.timestampQuery) {
      throw new DeviceError("profiling needs the timestamp-query feature");
    }
    this.flush();
    if (this.#profile) await Promise.all(this.#profile.pending);
    if (!on) {
      this.#profile?.set.destroy();
      this.#profile = null;
      return;
    }
    this.#profile ??= {
      set: this.gpu.createQuerySet({ type: "timestamp", count: 4096 }),
      labels: [],
      pending: [],
    };
  }

  /** Encodes the resolve of this batch's timestamps; returns what to run after submit. */
  #resolveProfile(encoder: GPUCommandEncoder): (() => void) | null {
    const prof = this.#profile;
    if (!prof || prof.labels.length === 0) return null;
    this.#pass?.end();
    this.#pass = null;
    const n = prof.labels.length;
    const bytes = 16 * n;
    const resolve = this.gpu.createBuffer({
      size: bytes,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    const read = this.gpu.createBuffer({ size: bytes, usage: READ_USAGE });
    encoder.resolveQuerySet(prof.set, 0, 2 * n, resolve, 0);
    encoder.copyBufferToBuffer(resolve, 0, read, 0, bytes);
    const labels = prof.labels;
    prof.labels = [];
    return () =>
      prof.pending.push((async () => {
        await read.mapAsync(GPUMapMode.READ);
        const t = new BigInt64Array(read.getMappedRange());
        labels.forEach((l, i) => {
          const ms = Number(t[2 * i + 1] - t[2 * i]) / 1e6;
          this.kernelMillis.set(l, (this.kernelMillis.get(l) ?? 0) + ms);
        });
        read.unmap();
        read.destroy();
        resolve.destroy();
      })());
  }

  /** Submits everything encoded so far. */
  flush(): void {
    if (!this.#encoder) return;
    const afterSubmit = this.#resolveProfile(this.#encoder);
    this.#pass?.end();
    this.#pass = null;
    this.gpu.queue.submit([this.#encoder.finish()]);
    afterSubmit?.();
    this.#encoder = null;
    this.#dispatches = 0;
    this.submits++;
    this.#recycle();
  }

  /**
   * Reads `bytes` bytes of a storage buffer back to the CPU. Throws when a
   * kernel reported bad input (errorBuffer) since the last read.
   */
  async read(buf: GPUBuffer, bytes: number, offset = 0): Promise<ArrayBuffer> {
    return (await this.readMany([{ buffer: buf, bytes, offset }]))[0];
  }

  /**
   * Reads several buffers back with one copy into one staging buffer and one
   * map: one wait (about 11 ms in Deno) however many there are. Each part is
   * its own mapped range, handed out without a second copy: Deno's
   * getMappedRange copies the bytes into a fresh ArrayBuffer (tests/device_test.ts
   * holds it to that), so transferring that buffer keeps it valid after unmap.
   */
  async readMany(
    parts: { buffer: GPUBuffer; bytes: number; offset?: number }[],
  ): Promise<ArrayBuffer[]> {
    this.reads++;
    const padded = (bytes: number) => Math.ceil(bytes / 4) * 4; // copies move whole words
    const at: number[] = []; // each part's offset in the staging buffer (mapped ranges start at multiples of 8)
    let total = ERROR_BYTES; // the error slots first
    for (const p of parts) {
      at.push(total);
      total += Math.ceil(p.bytes / 8) * 8;
    }
    const staging = this.#acquire(total, READ_USAGE);
    this.copy(this.errorBuffer, 0, staging, 0, ERROR_BYTES);
    parts.forEach((p, k) => this.copy(p.buffer, p.offset ?? 0, staging, at[k], padded(p.bytes)));
    this.flush();
    try {
      await staging.mapAsync(GPUMapMode.READ, 0, total);
    } catch (e) {
      this.#check();
      throw new DeviceError(`reading back from the GPU failed: ${(e as Error).message}`);
    }
    this.#check();
    const errors = new Int32Array(staging.getMappedRange(0, ERROR_BYTES).slice(0)); // kept past unmap
    const out = parts.map((p, k) => {
      const range = staging.getMappedRange(at[k], padded(p.bytes));
      return range.byteLength === p.bytes ? range.transfer() : range.slice(0, p.bytes);
    });
    staging.unmap();
    this.#release(staging, READ_USAGE);
    if (errors[ERROR_SLOTS.badTokenCount] !== 0) {
      this.gpu.queue.writeBuffer(this.errorBuffer, 0, new Int32Array(ERROR_BYTES / 4));
      const n = errors[ERROR_SLOTS.badTokenCount];
      throw new DeviceError(
        `embedding: ${n} token id${n === 1 ? "" : "s"} outside the vocabulary [0, ${
          errors[ERROR_SLOTS.vocabSize]
        }) ${n === 1 ? "was" : "were"} looked up (e.g. ${
          errors[ERROR_SLOTS.badTokenId]
        }); ids must come from the model's own tokenizer`,
      );
    }
    return out;
  }

  /** Waits until the GPU finished all submitted work. */
  async sync(): Promise<void> {
    this.flush();
    await this.gpu.queue.onSubmittedWorkDone();
    this.#check();
  }
}

let current: Device | null = null;
let creating: Promise<Device> | null = null;

/** The process-wide device, created on first use. */
export async function initDevice(): Promise<Device> {
  if (current) return current;
  creating ??= Device.create().then((d) => current = d);
  return await creating;
}

/** The device, which `initDevice()` must have created. */
export function device(): Device {
  if (!current) throw new Error("call `await initDevice()` before using tensors");
  return current;
}

/** For command-line programs: the device, or null after printing what to install. */
export async function initDeviceOrExplain(): Promise<Device | null> {
  try {
    return await initDevice();
  } catch (e) {
    if (e instanceof WebGPUUnavailableError) {
      console.error(`error: ${e.message}`);
      return null;
    }
    throw e;
  }
}
