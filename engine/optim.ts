/**
 * AdamW with torch semantics (decoupled weight decay, bias correction) as one
 * kernel per parameter, and global-norm gradient clipping that stays on the GPU.
 * @module
 */
import { adamwKernel } from "../kernels/optim.ts";
import { launch } from "./launch.ts";
import { keep, noGrad } from "./scope.ts";
import { Tensor } from "./tensor.ts";
import { elementwise } from "./ops/_raw.ts";
import { sumSquares } from "./ops/reduce.ts";
import { concat } from "./ops/shape.ts";
import { sum } from "./ops/reduce.ts";
import type { RawTensor } from "./safetensors_format.ts";
import { tensorFromRaw, tensorToRaw } from "./tensor_io.ts";

export interface AdamWOptions {
  lr?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
}

/** torch.optim.AdamW: p -= lr*wd*p; m, v moments; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). */
export class AdamW {
  readonly params: Tensor[];
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  step = 0;
  /** First and second moments, one per parameter. */
  readonly m: Tensor[];
  readonly v: Tensor[];

  constructor(params: Tensor[], options: AdamWOptions = {}) {
    this.params = params;
    this.lr = options.lr ?? 1e-3;
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.eps = options.eps ?? 1e-8;
    this.weightDecay = options.weightDecay ?? 0.01;
    for (const p of params) {
      if (p.dtype !== "f32") {
        throw new Error(`AdamW: parameters must be f32, got ${p.dtype} [${p.shape}]`);
      }
    }
    this.m = params.map((p) => keep(Tensor.zeros(p.shape)));
    this.v = params.map((p) => keep(Tensor.zeros(p.shape)));
  }

  /** One update of every parameter that has a gradient. */
  update(): void {
    this.step++;
    const bc1 = 1 - this.beta1 ** this.step;
    const bc2 = 1 - this.beta2 ** this.step;
    this.params.forEach((p, i) => {
      if (!p.grad) return;
      launch(adamwKernel, { g: p.grad, p, m: this.m[i], v: this.v[i] }, {
        n: p.size,
        lr: this.lr,
        beta1: this.beta1,
        beta2: this.beta2,
        eps: this.eps,
        weightDecay: this.weightDecay,
        stepSize: this.lr / bc1,
        bc2Sqrt: Math.sqrt(bc2),
      }, p.size);
    });
  }

  /** Clears every gradient. */
  zeroGrad(): void {
    for (const p of this.params) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  /** The moments m.i and v.i (parameter order) and the step count (saved by optim_files.ts). */
  async state(): Promise<{ tensors: Map<string, RawTensor>; step: number }> {
    const tensors = new Map<string, RawTensor>();
    for (let i = 0; i < this.params.length; i++) {
      for (const [kind, t] of [["m", this.m[i]], ["v", this.v[i]]] as const) {
        tensors.set(`${kind}.${i}`, await tensorToRaw(t));
      }
    }
    return { tensors, step: this.step };
  }

  /**
   * Restores what `state` gave, read from `path`. It must hold one m and v
   * per parameter, each of its parameter's shape: state saved for other
   * parameters (another model, a LoRA rank or target list) is refused naming
   * the first mismatch. `step` is null when the file had no step count.
   */
  restore(path: string, tensors: Map<string, RawTensor>, step: number | null): void {
    const held = tensors.size / 2;
    if (held !== this.params.length) {
      throw new Error(
        `${path}: optimizer state for ${held} parameter tensors, but this run trains ${this.params.length}: it was saved by a run of another model or LoRA setting`,
      );
    }
    const loaded: Tensor[] = [];
    try {
      this.params.forEach((p, i) => {
        for (const kind of ["m", "v"]) {
          const raw = tensors.get(`${kind}.${i}`);
          if (!raw) throw new Error(`${path}: missing ${kind}.${i}`);
          if (raw.dtype !== "F32" || raw.shape.join() !== p.shape.join()) {
            throw new Error(
              `${path}: ${kind}.${i} is ${raw.dtype} [${raw.shape}], but parameter ${i} is F32 [${p.shape}]: it was saved by a run of another model or LoRA setting`,
            );
          }
          loaded.push(keep(tensorFromRaw(raw)));
        }
      });
    } catch (e) {
      loaded.forEach((t) => t.dispose());
      throw e;
    }
    this.dispose();
    this.params.forEach((_, i) => {
      this.m[i] = loaded[2 * i];
      this.v[i] = loaded[2 * i + 1];
    });
    if (step === null || !Number.isInteger(step) || step < 0) {
      throw new Error(`${path}: no valid step count (metadata "step")`);
    }
    this.step = step;
  }

  dispose(): void {
    [...this.m, ...this.v].forEach((t) => t.dispose());
  }
}

/**
 * Scales all gradients so their global L2 norm is at most maxNorm (torch's
 * clip_grad_norm_: coef = min(1, maxNorm / (norm + 1e-6))). Returns the norm
 * before clipping as a one-element tensor (read it back only if needed).
 */
export function clipGradNorm(params: Tensor[], maxNorm: number): Tensor {
  return noGrad(() => {
    const withGrad = params.filter((p) => p.grad);
    if (withGrad.length === 0) return Tensor.zeros([1]);
    const squares = withGrad.map((p) => sumSquares(p.grad!)); // () each
    const parts = squares.map((t) => t.view([1]));
    const all = concat(parts, 0);
    const total = sum(all);
    const norm = elementwise("sqrt", [total], "sqrt(a)");
    const coef = elementwise("clip_coef", [norm], "min(1.0, alpha / (a + 1e-6))", maxNorm);
    for (const p of withGrad) {
      const scaled = keep(elementwise("clip", [p.grad!, coef], "a * b"));
      p.grad!.dispose();
      p.grad = scaled;
    }
    [...squares, ...parts, all, total, coef].forEach((t) => t.dispose());
    const out = norm.view([1]);
    norm.dispose();
    return out;
  });
}
