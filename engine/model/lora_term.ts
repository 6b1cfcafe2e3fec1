/**
 * The LoRA term a forward adds to an adapted linear layer (the adapters'
 * files and creation: lora.ts).
 * @module
 */
import { add, matmul, mulScalar } from "../ops/mod.ts";
import type { Tensor } from "../tensor.ts";

/** One adapted layer: A (r, in), B (out, r), scale alpha / r. */
export interface Adapter {
  A: Tensor;
  B: Tensor;
  scale: number;
}

/** x·Wᵀ-sized LoRA term (..., out) for x (..., in). */
export function loraTerm(x: Tensor, a: Adapter): Tensor {
  return mulScalar(matmul(matmul(x, a.A, { transB: true }), a.B, { transB: true }), a.scale);
}

/** Adds the LoRA term of `adapter` (if any) to a linear layer's output y. */
export function withLora(y: Tensor, x: Tensor, adapter: Adapter | undefined): Tensor {
  return adapter ? add(y, loraTerm(x, adapter)) : y;
}
