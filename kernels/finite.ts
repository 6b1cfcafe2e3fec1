/** Counting NaN/Inf values of a tensor, for checking weights once at load. @module */
import { WG } from "./common.ts";
import { declareKernel } from "./declare.ts";

/** 32-bit words each invocation scans (contiguous: cheap on CPU adapters, fine on GPUs). */
export const FINITE_WORDS_PER_THREAD = 16;

/**
 * counts[slot] += number of NaN/Inf elements in x, read as u32 words: one f32,
 * or two bf16/f16 halves (an odd tensor's padding half is zero, so finite).
 * kind: 0 f32, 1 bf16, 2 f16. Launched over ceil(words / FINITE_WORDS_PER_THREAD).
 */
export const nonFiniteCountKernel = declareKernel({
  label: "non_finite_count",
  inputs: { x: "u32" },
  outputs: { counts: "atomic<u32>" },
  params: { words: "u32", kind: "u32", slot: "u32" },
  grid: "elements",
  workgroupSize: [WG],
  helpers:
    "fn bad_half(h: u32, exp_mask: u32) -> u32 { return select(0u, 1u, (h & exp_mask) == exp_mask); }",
  main: `
  let i = flat_index(gid, nwg);
  let words = params.words; let kind = params.kind;
  let j0 = i * ${FINITE_WORDS_PER_THREAD}u;
  if (j0 >= words) { return; }
  let j1 = min(j0 + ${FINITE_WORDS_PER_THREAD}u, words);
  var n = 0u;
  for (var j = j0; j < j1; j++) {
    let w = x[j];
    if (kind == 0u) {
      n += bad_half(w, 0x7f800000u);
    } else {
      let mask = select(0x7c00u, 0x7f80u, kind == 1u);
      n += bad_half(w & 0xffffu, mask) + bad_half(w >> 16u, mask);
    }
  }
  if (n > 0u) { atomicAdd(&counts[params.slot], n); }`,
});
