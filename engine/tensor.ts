/**
 * Tensor: a shape, a dtype and GPU storage, plus the tape node that made it.
 * Storage is reference-counted so that reshapes share one buffer.
 * @module
 */
import { device } from "./device.ts";
import { Rng } from "./random.ts";
import { type Disposable, track } from "./scope.ts";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from "./half.ts";

export { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 };

/** f32 compute; bf16/f16 storage (packed two per u32); i32 ids. */
export type DType = "f32" | "i32" | "bf16" | "f16";

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Record<DType, number> = { f32: 4, i32: 4, bf16: 2, f16: 2 };

/** A node of the tape: the inputs of an op and how to map the output's gradient to theirs. */
export interface GradNode {
  op: string;
  inputs: Tensor[];
  /** Gradients with respect to each input (null where none flows). */
  backward(grad: Tensor): (Tensor | null)[];
  /** Tensors only the backward uses, disposed once it ran. */
  saved?: Tensor[];
  /** Other tensors the backward reads that are not inputs (e.g. token ids); not disposed by it. */
  keeps?: Tensor[];
}

/** autograd.ts installs its backward() here, so this module imports no autograd or op code. */
let runBackward: ((root: Tensor, grad?: Tensor) => void) | null = null;
export function installBackward(fn: (root: Tensor, grad?: Tensor) => void): void {
  runBackward = fn;
}

class Storage {
  refs = 1;
  constructor(readonly buffer: GPUBuffer, readonly bytes: number) {}
}

/** Number of elements of a shape. */
export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function checkShape(shape: readonly number[], what: string): void {
  if (!shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new Error(`${what}: shape must be non-negative integers, got [${shape}]`);
  }
}

/** Options of tensor constructors. */
export interface TensorOptions {
  dtype?: DType;
  requiresGrad?: boolean;
}

export class Tensor implements Disposable {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly size: number;
  requiresGrad: boolean;
  /** Accumulated gradient (leaf tensors that require grad). */
  grad: Tensor | null = null;
  /** The op that produced this tensor, while the tape holds it. */
  node: GradNode | null = null;
  /** Set when backward() ran through this tensor and freed its node: a second pass must fail. */
  graphFreed = false;
  /** Set by scope tracking. */
  scope: Set<Disposable> | null = null;
  #storage: Storage | null;

  private constructor(storage: Storage, shape: readonly number[], dtype: DType, grad: boolean) {
    this.#storage = storage;
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    this.size = numel(shape);
    this.requiresGrad = grad;
    track(this);
  }

  /** An uninitialised tensor (for op outputs). */
  static empty(
    shape: readonly number[],
    dtype: DType = "f32",
    options: { exact?: boolean } = {},
  ): Tensor {
    checkShape(shape, "Tensor.empty");
    const bytes = Math.ceil((numel(shape) * DTYPE_BYTES[dtype]) / 4) * 4;
    return new Tensor(
      new Storage(device().alloc(bytes, options.exact), bytes),
      shape,
      dtype,
      false,
    );
  }

  /** A tensor from raw little-endian bytes in `dtype` layout. */
  static fromBytes(
    bytes: Uint8Array,
    shape: readonly number[],
    dtype: DType,
    options: { exact?: boolean } = {},
  ): Tensor {
    const expected = numel(shape) * DTYPE_BYTES[dtype];
    if (bytes.byteLength !== expected) {
      throw new Error(
        `Tensor.fromBytes: ${bytes.byteLength} bytes for shape [${shape}] ${dtype} (need ${expected})`,
      );
    }
    const t = Tensor.empty(shape, dtype, options);
    const padded = bytes.byteLength % 4 === 0 ? bytes : (() => {
      const p = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
      p.set(bytes);
      return p;
    })();
    if (padded.byteLength > 0) device().upload(t.buffer, padded); // t is fresh: no flush needed
    return t;
  }

  /** A tensor from numbers (row-major). bf16/f16 values are rounded to nearest even. */
  static from(
    data: ArrayLike<number>,
    shape: readonly number[] = [data.length],
    options: TensorOptions = {},
  ): Tensor {
    const dtype = options.dtype ?? "f32";
    checkShape(shape, "Tensor.from");
    if (numel(shape) !== data.length) {
      throw new Error(`Tensor.from: ${data.length} values do not fill shape [${shape}]`);
    }
    let bytes: Uint8Array;
    if (dtype === "f32") bytes = new Uint8Array(Float32Array.from(data).buffer);
    else if (dtype === "i32") {
      for (let i = 0; i < data.length; i++) {
        const v = data[i];
        if (!Number.isInteger(v) || v < -(2 ** 31) || v >= 2 ** 31) {
          throw new Error(`Tensor.from: value ${v} at [${i}] is not an i32 integer`);
        }
      }
      bytes = new Uint8Array(Int32Array.from(data).buffer);
    } else {
      const half = new Uint16Array(data.length);
      for (let i = 0; i < data.length; i++) {
        half[i] = dtype === "bf16" ? f32ToBf16(data[i]) : f32ToF16(data[i]);
      }
      bytes = new Uint8Array(half.buffer);
    }
    const t = Tensor.fromBytes(bytes, shape, dtype);
    t.requiresGrad = options.requiresGrad ?? false;
    return t;
  }

  /** A tensor filled with `value`. */
  static full(shape: readonly number[], value: number, options: TensorOptions = {}): Tensor {
    checkShape(shape, "Tensor.full");
    return Tensor.from(new Float32Array(numel(shape)).fill(value), shape, options);
  }

  static zeros(shape: readonly number[], options: TensorOptions = {}): Tensor {
    return Tensor.full(shape, 0, options);
  }

  static ones(shape: readonly number[], options: TensorOptions = {}): Tensor {
    return Tensor.full(shape, 1, options);
  }

  /** Normal(mean, std) values from a seeded generator. */
  static randn(
    shape: readonly number[],
    options: TensorOptions & { seed?: number; std?: number; mean?: number } = {},
  ): Tensor {
    const rng = new Rng(options.seed ?? 0);
    const { std = 1, mean = 0 } = options;
    const v = new Float32Array(numel(shape));
    for (let i = 0; i < v.length; i++) v[i] = mean + std * rng.normal();
    return Tensor.from(v, shape, options);
  }

  /** Uniform [low, high) values from a seeded generator. */
  static rand(
    shape: readonly number[],
    options: TensorOptions & { seed?: number; low?: number; high?: number } = {},
  ): Tensor {
    const rng = new Rng(options.seed ?? 0);
    const { low = 0, high = 1 } = options;
    const v = new Float32Array(numel(shape));
    for (let i = 0; i < v.length; i++) v[i] = low + (high - low) * rng.next();
    return Tensor.from(v, shape, options);
  }

  /** The GPU buffer (throws once disposed). */
  get buffer(): GPUBuffer {
    if (!this.#storage) {
      throw new Error(`tensor [${this.shape}] ${this.dtype} used after dispose()`);
    }
    return this.#storage.buffer;
  }

  /** Bytes of data (excluding pool rounding). */
  get byteLength(): number {
    return Math.ceil((this.size * DTYPE_BYTES[this.dtype]) / 4) * 4;
  }

  get disposed(): boolean {
    return this.#storage === null;
  }

  /** A tensor of another shape over the same storage (no copy, no tape). */
  view(shape: readonly number[]): Tensor {
    if (numel(shape) !== this.size) {
      throw new Error(`view: cannot view [${this.shape}] as [${shape}]`);
    }
    const s = this.#storage;
    if (!s) throw new Error("view of a disposed tensor");
    s.refs++;
    return new Tensor(s, shape, this.dtype, false);
  }

  /**
   * A view of the first numel(shape) elements (no copy, no tape): e.g. the
   * first rows of a cache whose later rows are not in use.
   */
  prefix(shape: readonly number[]): Tensor {
    checkShape(shape, "prefix");
    if (numel(shape) > this.size) {
      throw new Error(`prefix: [${shape}] is larger than [${this.shape}]`);
    }
    const s = this.#storage;
    if (!s) throw new Error("prefix of a disposed tensor");
    s.refs++;
    return new Tensor(s, shape, this.dtype, false);
  }

  /** Reads the values back, row-major: Float32Array (f32, bf16, f16) or Int32Array (i32). */
  async toArray(): Promise<Float32Array | Int32Array> {
    const raw = await device().read(this.buffer, this.byteLength);
    if (this.dtype === "f32") return new Float32Array(raw, 0, this.size);
    if (this.dtype === "i32") return new Int32Array(raw, 0, this.size);
    const half = new Uint16Array(raw, 0, this.size);
    const out = new Float32Array(this.size);
    for (let i = 0; i < this.size; i++) {
      out[i] = this.dtype === "bf16" ? bf16ToF32(half[i]) : f16ToF32(half[i]);
    }
    return out;
  }

  /** The single value of a one-element tensor. */
  async item(): Promise<number> {
    if (this.size !== 1) throw new Error(`item(): tensor has shape [${this.shape}], not one value`);
    return (await this.toArray())[0];
  }

  /** Tensors the tape needs alive for this one's backward. */
  dependencies(): Tensor[] {
    const n = this.node;
    return n ? [...n.inputs, ...(n.saved ?? []), ...(n.keeps ?? [])] : [];
  }

  /** Releases the storage (when no view shares it) and the tape node. Idempotent. */
  dispose(): void {
    const s = this.#storage;
    if (!s) return;
    this.#storage = null;
    this.node = null;
    this.scope?.delete(this);
    this.scope = null;
    if (--s.refs === 0) device().free(s.buffer);
  }

  /** Backpropagates from this tensor (a scalar unless `grad` is given): autograd.ts's backward(). */
  backward(grad?: Tensor): void {
    if (!runBackward) throw new Error("backward(): import engine/autograd.ts (mod.ts does)");
    runBackward(this, grad);
  }

  toString(): string {
    return `Tensor(shape=[${this.shape}], dtype=${this.dtype}${this.requiresGrad ? ", grad" : ""})`;
  }
}
