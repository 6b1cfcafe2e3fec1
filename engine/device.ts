/**
 * The WebGPU device: a pipeline cache keyed by WGSL source, one command
 * encoder that ops append dispatches to, batched submission, readback, and
 * the error buffer through which kernels report bad input. Buffers come from
 * a size-class pool (buffer_pool.ts); the adapter from backend.ts.
 * @module
 */
import { type DeviceInfo, requestGpu, WebGPUUnavailableError } from "./backend.ts";
import { BufferPool } from "./buffer_pool.ts";

/** Deno, where getMappedRange hands out a copy (not a browser, where it is the mapping). */
const IN_DENO = typeof Deno !== "undefined";
export { type DeviceInfo, WebGPUUnavailableError };

/** Thrown when the GPU device is lost, runs out of memory, or a kernel reported bad input. */
export class DeviceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DeviceError";
  }
}

const STORAGE_USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
const UNIFORM_USAGE = GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST;
const READ_USAGE = GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST;

/** Dispatches appended before an automatic submit. */
const DISPATCHES_PER_SUBMIT = 48;

/** i32 words of Device.errorBuffer; the kernel that writes them says what they mean. */
export const ERROR_WORDS = 4;

/** Turns the error words a kernel wrote into a message, or null when they are not its own. */
export type KernelErrorReader = (words: Int32Array) => string | null;

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
  #pool: BufferPool;
  #pipelines = new Map<string, GPUComputePipeline>();
  /** Each pipeline's bind group layout, fetched once (getBindGroupLayout makes a new object). */
  readonly #layouts = new Map<GPUComputePipeline, GPUBindGroupLayout>();
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #dispatches = 0;
  #error: string | null = null;
  #errorReaders = new Set<KernelErrorReader>();
  /** Submissions so far (for tests and benchmarks). */
  submits = 0;
  /** Readbacks (read calls) so far, each a wait of about 11 ms in Deno (for benchmarks). */
  reads = 0;
  /** Dispatches so far, by kernel label (for tests and benchmarks). */
  readonly dispatchCounts: Map<string, number> = new Map();
  /**
   * Where kernels report bad input they find on the GPU (ERROR_WORDS i32),
   * read with every readback: the next `read` throws with the message of the
   * reader the kernel's op registered (`readErrorsWith`).
   */
  readonly errorBuffer: GPUBuffer;

  private constructor(gpu: GPUDevice, info: DeviceInfo) {
    this.gpu = gpu;
    this.info = info;
    this.#pool = new BufferPool(
      gpu,
      { maxBufferSize: info.maxBufferSize, maxBinding: info.maxStorageBufferBindingSize },
      STORAGE_USAGE,
      (message) => new DeviceError(message),
    );
    this.errorBuffer = gpu.createBuffer({ size: 4 * ERROR_WORDS, usage: STORAGE_USAGE });
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

  static async create(): Promise<Device> {
    const { gpu, info } = await requestGpu();
    return new Device(gpu, info);
  }

  /** Bytes of storage buffers handed out and not yet released. */
  get liveBytes(): number {
    return this.#pool.liveBytes;
  }

  /** Bytes the pool holds in total (live + cached). */
  get pooledBytes(): number {
    return this.#pool.pooledBytes;
  }

  /** The most live bytes since the last resetPeak() (memory accounting). */
  get peakLiveBytes(): number {
    return this.#pool.peakLiveBytes;
  }

  /** Starts a new peak of live bytes from now. */
  resetPeak(): void {
    this.#pool.resetPeak();
  }

  #check(): void {
    if (this.#error) throw new DeviceError(this.#error);
  }

  #release(buf: GPUBuffer, usage: number): void {
    this.#pool.release(buf, usage);
    if (!this.#encoder) this.#pool.recycle();
  }

  /** A storage buffer of at least `bytes` bytes (contents undefined); `exact`: see BufferPool.acquire. */
  alloc(bytes: number, exact = false): GPUBuffer {
    this.#check();
    return this.#pool.acquire(Math.max(bytes, 4), STORAGE_USAGE, exact);
  }

  /** Returns a storage buffer to the pool. */
  free(buf: GPUBuffer): void {
    this.#release(buf, STORAGE_USAGE);
  }

  /**
   * Uploads `data` into `buf` at byte offset 0, after every dispatch already
   * encoded (which may read `buf`): the open encoder is submitted first.
   */
  write(buf: GPUBuffer, data: ArrayBufferView): void {
    if (this.#encoder) this.flush();
    this.upload(buf, data);
  }

  /**
   * Uploads `data` into a buffer no encoded dispatch uses yet (one just
   * allocated: the pool hands out only buffers whose users were submitted),
   * without submitting the open encoder. A queue write runs before the next
   * submit, so after every earlier one and before the dispatches that will
   * read it. (A submit while the previous one runs waits for it on lavapipe:
   * fewer submits per step let the host encode while the GPU works.)
   */
  upload(buf: GPUBuffer, data: ArrayBufferView): void {
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
    const maxBind = this.info.maxStorageBufferBindingSize;
    for (const b of d.buffers) {
      if (b.size > maxBind) {
        throw new DeviceError(
          `${label}: a ${b.size}-byte tensor exceeds this adapter's ` +
            `maxStorageBufferBindingSize (${maxBind} bytes); split it (by rows or vocabulary chunks)`,
        );
      }
    }
    const [x, y = 1, z = 1] = d.workgroups;
    const max = this.info.maxComputeWorkgroupsPerDimension;
    if (x > max || y > max || z > max) {
      throw new DeviceError(`dispatch ${label} of ${x}x${y}x${z} workgroups exceeds ${max}`);
    }
    const uniform = this.#pool.acquire(Math.max(16, d.words.byteLength), UNIFORM_USAGE);
    this.gpu.queue.writeBuffer(uniform, 0, d.words);
    const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: { buffer: uniform } }];
    d.buffers.forEach((buffer, i) => entries.push({ binding: i + 1, resource: { buffer } }));
    let layout = this.#layouts.get(pipeline);
    if (!layout) this.#layouts.set(pipeline, layout = pipeline.getBindGroupLayout(0));
    const bindGroup = this.gpu.createBindGroup({ layout, entries });
    this.#encoder ??= this.gpu.createCommandEncoder();
    this.#pass ??= this.#encoder.beginComputePass();
    this.#pass.setPipeline(pipeline);
    this.#pass.setBindGroup(0, bindGroup);
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

  /** Submits everything encoded so far. */
  flush(): void {
    if (!this.#encoder) return;
    this.#pass?.end();
    this.#pass = null;
    this.gpu.queue.submit([this.#encoder.finish()]);
    this.#encoder = null;
    this.#dispatches = 0;
    this.submits++;
    this.#pool.recycle();
  }

  /** Registers how to read the error words of a kernel that writes errorBuffer (idempotent). */
  readErrorsWith(reader: KernelErrorReader): void {
    this.#errorReaders.add(reader);
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
   * getMappedRange copies the bytes into a fresh ArrayBuffer
   * (tests/engine_test.ts holds it to that), so transferring that buffer keeps
   * it valid after unmap. A browser's range is the mapping itself: copied.
   */
  async readMany(
    parts: { buffer: GPUBuffer; bytes: number; offset?: number }[],
  ): Promise<ArrayBuffer[]> {
    this.reads++;
    const padded = (bytes: number) => Math.ceil(bytes / 4) * 4; // copies move whole words
    const at: number[] = []; // each part's offset in the staging buffer (mapped ranges start at multiples of 8)
    const errorBytes = 4 * ERROR_WORDS;
    let total = errorBytes; // the error words first
    for (const p of parts) {
      at.push(total);
      total += Math.ceil(p.bytes / 8) * 8;
    }
    this.#check();
    const staging = this.#pool.acquire(total, READ_USAGE);
    this.copy(this.errorBuffer, 0, staging, 0, errorBytes);
    parts.forEach((p, k) => this.copy(p.buffer, p.offset ?? 0, staging, at[k], padded(p.bytes)));
    this.flush();
    try {
      await staging.mapAsync(GPUMapMode.READ, 0, total);
    } catch (e) {
      this.#check();
      throw new DeviceError(`reading back from the GPU failed: ${(e as Error).message}`);
    }
    this.#check();
    const errors = new Int32Array(staging.getMappedRange(0, errorBytes).slice(0)); // kept past unmap
    const out = parts.map((p, k) => {
      const range = staging.getMappedRange(at[k], padded(p.bytes));
      // a browser's mapped range is not detachable (and dies at unmap): copied there
      return range.byteLength === p.bytes && IN_DENO ? range.transfer() : range.slice(0, p.bytes);
    });
    staging.unmap();
    this.#release(staging, READ_USAGE);
    if (errors.some((w) => w !== 0)) {
      this.gpu.queue.writeBuffer(this.errorBuffer, 0, new Int32Array(ERROR_WORDS));
      const messages = [...this.#errorReaders].map((read) => read(errors)).filter((m) => m);
      throw new DeviceError(
        messages.join("; ") || `a kernel reported bad input (error words ${errors.join(", ")})`,
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
