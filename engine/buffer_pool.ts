/**
 * A size-class pool of GPU buffers with live-byte accounting.
 *
 * Reuse rule: a released buffer may still be read by dispatches that are
 * encoded but not yet submitted. It becomes reusable only once that encoder
 * is submitted (`recycle`); from then on WebGPU's queue order (submits and
 * `writeBuffer` run in call order) guarantees no later user sees a stale
 * read. This keeps reuse safe without waiting ~11 ms for `onSubmittedWorkDone`.
 * @module
 */

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

export class BufferPool {
  #gpu: GPUDevice;
  #maxBufferSize: number;
  #maxBinding: number;
  #error: (message: string) => Error;
  #free = new Map<string, GPUBuffer[]>(); // `${usage}:${size}` -> reusable buffers
  #pending: [string, GPUBuffer][] = []; // released in the open encoder; free after submit
  /** The usage whose buffers are counted in liveBytes and pooledBytes (storage). */
  readonly counted: number;
  /** Bytes of counted buffers handed out and not yet released. */
  liveBytes = 0;
  /** Bytes of counted buffers the pool holds in total (live + cached). */
  pooledBytes = 0;
  /** The most live bytes since the last resetPeak(). */
  peakLiveBytes = 0;

  /** `error` makes what a failed allocation throws (too large for the adapter, out of memory). */
  constructor(
    gpu: GPUDevice,
    limits: { maxBufferSize: number; maxBinding: number },
    counted: number,
    error: (message: string) => Error,
  ) {
    this.#gpu = gpu;
    this.#error = error;
    this.#maxBufferSize = limits.maxBufferSize;
    this.#maxBinding = limits.maxBinding;
    this.counted = counted;
  }

  /**
   * A buffer of at least `bytes` bytes for `usage` (contents undefined).
   * `exact`: sized to the bytes (256-byte multiple), not to a class, for what
   * lives long (weights, a KV cache): a class would waste up to 25% of it.
   * Such a buffer is destroyed when released, unless its size is a class.
   */
  acquire(bytes: number, usage: number, exact = false): GPUBuffer {
    let size = exact ? Math.ceil(bytes / 256) * 256 : sizeClass(bytes);
    // Rounding up must not push a bindable tensor past the binding limit.
    if (bytes <= this.#maxBinding && size > this.#maxBinding) size = Math.ceil(bytes / 256) * 256;
    const buf = this.#free.get(`${usage}:${size}`)?.pop() ?? this.#create(size, usage);
    if (usage === this.counted) {
      this.liveBytes += buf.size;
      this.peakLiveBytes = Math.max(this.peakLiveBytes, this.liveBytes);
    }
    return buf;
  }

  #create(size: number, usage: number): GPUBuffer {
    if (size > this.#maxBufferSize) {
      throw this.#error(
        `buffer of ${size} bytes exceeds this adapter's maxBufferSize (${this.#maxBufferSize})`,
      );
    }
    try {
      const buf = this.#gpu.createBuffer({ size, usage });
      if (usage === this.counted) this.pooledBytes += size;
      return buf;
    } catch (e) {
      throw this.#error(
        `could not allocate ${size} bytes on the GPU: ${(e as Error).message}`,
      );
    }
  }

  /** Gives a buffer back; reusable after the next `recycle` (the encoder's submit). */
  release(buf: GPUBuffer, usage: number): void {
    if (usage === this.counted) this.liveBytes -= buf.size;
    this.#pending.push([`${usage}:${buf.size}`, buf]);
  }

  /** Makes every released buffer reusable (call after submitting the encoder that used them). */
  recycle(): void {
    for (const [key, buf] of this.#pending) {
      if (buf.size !== sizeClass(buf.size)) {
        // an exact-size buffer: no class request would take it
        if (key.startsWith(`${this.counted}:`)) this.pooledBytes -= buf.size;
        buf.destroy();
        continue;
      }
      let list = this.#free.get(key);
      if (!list) this.#free.set(key, list = []);
      list.push(buf);
    }
    this.#pending = [];
  }

  /** Starts a new peak of live bytes from now. */
  resetPeak(): void {
    this.peakLiveBytes = this.liveBytes;
  }
}
