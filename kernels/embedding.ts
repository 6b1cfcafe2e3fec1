/** Embedding gather and its scatter-add backward. @module */
import { WG } from "./common.ts";
import { declareKernel, memoKernel } from "./declare.ts";

/**
 * out[t, c] = W[ids[t] - offset, c] for ids in [offset, offset + V), else 0
 * (so a table split into row chunks is the sum of its chunks' lookups).
 * Ids outside [0, vocab) are reported in err (Device.errorBuffer: count, id,
 * vocab; engine/ops/embedding.ts reads them) by the offset-0 chunk. W is f32, or bf16/f16 packed in u32.
 */
export const embeddingKernel = memoKernel((dtype: "f32" | "bf16" | "f16") => {
  const load = dtype === "f32" ? "w[j]" : `unpack_half(w[j / 2u], j & 1u)`;
  return declareKernel({
    label: "embedding",
    inputs: { w: dtype === "f32" ? "f32" : "u32", ids: "i32" },
    outputs: { out: "f32", err: "atomic<i32>" },
    params: { T: "u32", C: "u32", V: "u32", offset: "i32", vocab: "i32" },
    grid: "elements",
    workgroupSize: [WG],
    helpers: dtype === "f32" ? "" : /* wgsl */ `
fn unpack_half(word: u32, hi: u32) -> f32 {
  let h = select(word & 0xffffu, word >> 16u, hi == 1u);
  return ${dtype === "bf16" ? "bitcast<f32>(h << 16u)" : "unpack2x16float(h).x"};
}`,
    main: `
  let i = flat_index(gid, nwg);
  let C = params.C;
  if (i >= params.T * C) { return; }
  let t = i / C; let c = i % C;
  let vocab = params.vocab;
  if (c == 0u && params.offset == 0 && (ids[t] < 0 || ids[t] >= vocab)) {
    atomicAdd(&err[0], 1);
    atomicStore(&err[1], ids[t]);
    atomicStore(&err[2], vocab);
  }
  let row = ids[t] - params.offset;
  if (row < 0 || row >= i32(params.V)) { out[i] = 0.0; return; }
  let j = u32(row) * C + c;
  out[i] = ${load};`,
  });
});

/**
 * dW[v, c] = sum over t with ids[t] = v of g[t, c]. One invocation per column c
 * walks every t: no atomics (WGSL has no f32 atomics) and a fixed summation order.
 * dW must be zero-filled; ids outside the chunk are skipped.
 */
export const embeddingBackwardKernel = declareKernel({
  label: "embedding_bwd",
  inputs: { g: "f32", ids: "i32" },
  outputs: { dw: "f32" },
  params: { T: "u32", C: "u32", V: "u32", offset: "i32" },
  grid: "elements",
  workgroupSize: [WG],
  main: `
  let c = flat_index(gid, nwg);
  let T = params.T; let C = params.C;
  if (c >= C) { return; }
  let V = i32(params.V); let offset = params.offset;
  for (var t = 0u; t < T; t++) {
    let row = ids[t] - offset;
    if (row >= 0 && row < V) { dw[u32(row) * C + c] += g[t * C + c]; }
  }`,
});
