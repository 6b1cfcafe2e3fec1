/** Embedding lookup: weight (V, C), ids (...) i32 -> (..., C). @module */
import { embeddingBackwardKernel, embeddingKernel } from "../../kernels/embedding.ts";
import { device, type KernelErrorReader } from "../device.ts";
import { record } from "../autograd.ts";
import { Tensor } from "../tensor.ts";
import { launch } from "../launch.ts";
import type { NDArray } from "./_reference.ts";
import { fill } from "./fill.ts";

/** The embedding kernel's error words: how many ids were outside [0, vocab), one of them, vocab. */
const readBadIds: KernelErrorReader = ([n, id, vocab]) =>
  n === 0
    ? null
    : `embedding: ${n} token id${n === 1 ? "" : "s"} outside the vocabulary [0, ${vocab}) ${
      n === 1 ? "was" : "were"
    } looked up (e.g. ${id}); ids must come from the model's own tokenizer`;

/**
 * Rows of `weight` picked by `ids`. With `offset`, weight holds rows
 * [offset, offset + V) of a table of `vocab` rows and other ids give zeros,
 * so a table split into chunks is the sum of the chunks' lookups. An id
 * outside [0, vocab) is an error, reported at the next readback (the ids live
 * on the GPU).
 */
export function embedding(weight: Tensor, ids: Tensor, offset = 0, vocab?: number): Tensor {
  if (weight.shape.length !== 2) {
    throw new Error(`embedding: weight must be (V, C), got [${weight.shape}]`);
  }
  if (ids.dtype !== "i32") throw new Error(`embedding: ids must be i32, got ${ids.dtype}`);
  if (weight.dtype === "i32") throw new Error("embedding: weight must be a float tensor");
  const [V, C] = weight.shape;
  const out = Tensor.empty([...ids.shape, C]);
  device().readErrorsWith(readBadIds);
  launch(
    embeddingKernel(weight.dtype),
    {
      w: weight,
      ids,
      out,
      err: { buffer: device().errorBuffer },
    },
    { T: ids.size, C, V, offset, vocab: vocab ?? offset + V },
    out.size,
  );
  return record(out, {
    op: "embedding",
    inputs: [weight],
    keeps: [ids],
    // scatter-add of g into the rows that were read
    backward: (g) => {
      const dw = fill([V, C], 0);
      launch(embeddingBackwardKernel, { g, ids, dw }, { T: ids.size, C, V, offset }, C);
      return [dw];
    },
  });
}

export function embeddingReference(weight: NDArray, ids: number[]): NDArray {
  const C = weight.shape[1];
  const out = new Float64Array(ids.length * C);
  ids.forEach((id, t) => out.set(weight.data.subarray(id * C, (id + 1) * C), t * C));
  return { shape: [ids.length, C], data: out };
}
