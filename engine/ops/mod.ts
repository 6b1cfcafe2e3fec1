/** Every op, re-exported. One file per op family; each holds forward, backward and CPU reference. @module */
export * from "./elementwise.ts";
export * from "./reduce.ts";
export { elementwise, sumTo } from "./_raw.ts";
export * from "./matmul.ts";
export * from "./softmax.ts";
export * from "./shape.ts";
export * from "./embedding.ts";
export { fill, randomNormal } from "./fill.ts";
export { addRmsNorm, rmsNorm, rope } from "./norm.ts";
export { nonFiniteCounts, nonFiniteCountsReference } from "./finite.ts";
export { cacheWrite, kvCacheReference, ropeCacheWrite, ropeCacheWriteRows } from "./kv_cache.ts";
export { attention, type AttentionOptions, attentionReference } from "./attention.ts";
