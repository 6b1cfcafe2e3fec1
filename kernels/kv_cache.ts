/**
 * Writes into a KV cache (B, Hkv, maxLength, D) at a slot: the plain append,
 * and decoding's rope on q and k fused with the append. Both are side effects
 * on the cache; no gradient flows into a cache.
 * @module
 */
import { declareKernel } from "./declare.ts";

/**
 * Appends k and v (B, Hkv, T, D) to a KV cache (B, Hkv, maxLength, D) at
 * slot `at`, both in one dispatch. Grid: elements of k.
 */
export const cacheWriteKernel = declareKernel({
  label: "kv_cache_write",
  inputs: { k: "f32", v: "f32" },
  outputs: { keys: "f32", values: "f32" },
  params: { n: "u32", T: "u32", D: "u32", max_length: "u32", at: "u32" },
  grid: "elements",
  workgroupSize: [64],
  main: /* wgsl */ `
  let i = flat_index(gid, nwg);
  if (i >= params.n) { return; }
  let d = i % params.D;
  let t = (i / params.D) % params.T;
  let group = i / (params.D * params.T); // (b, kv head)
  let j = (group * params.max_length + params.at + t) * params.D + d;
  keys[j] = k[i];
  values[j] = v[i];`,
});

/**
 * Decoding's rope and cache write in one dispatch: invocations [0, nq) rotate
 * q (B, Hq, T, D) into q_out; the rest rotate k (B, Hkv, T, D) and write it and
 * v into the cache at position `at`. Rope's expression (norm_rope.ts), so the
 * same bits as rope twice then cacheWriteKernel.
 */
export const ropeCacheWriteKernel = declareKernel({
  label: "rope_kv_cache_write",
  inputs: { q: "f32", k: "f32", v: "f32", cosT: "f32", sinT: "f32" },
  outputs: { q_out: "f32", keys: "f32", values: "f32" },
  params: {
    nq: "u32",
    nk: "u32",
    Hq: "u32",
    Hkv: "u32",
    T: "u32",
    D: "u32",
    max_length: "u32",
    at: "u32",
    sign: "f32",
  },
  grid: "elements",
  workgroupSize: [64],
  helpers: /* wgsl */ `
fn rotated(x: f32, partner: f32, i: u32, H: u32) -> f32 {
  let D = params.D; let T = params.T;
  let d = i % D;
  let t = (i / D) % T;
  let b = i / (D * T * H);
  let c = (b * T + t) * D + d;
  return x * cosT[c] + partner * sinT[c] * params.sign;
}`,
  main: /* wgsl */ `
  let i = flat_index(gid, nwg);
  let D = params.D; let half = D / 2u;
  if (i < params.nq) {
    let rot = select(q[i - half], -q[i + half], i % D < half);
    q_out[i] = rotated(q[i], rot, i, params.Hq);
    return;
  }
  let j = i - params.nq;
  if (j >= params.nk) { return; }
  let rot = select(k[j - half], -k[j + half], j % D < half);
  let t = (j / D) % params.T;
  let group = j / (D * params.T); // (b, kv head)
  let at = (group * params.max_length + params.at + t) * D + j % D;
  keys[at] = rotated(k[j], rot, j, params.Hkv);
  values[at] = v[j];`,
});

/**
 * ropeCacheWriteKernel for a batch whose rows sit at different lengths (a
 * server's slots): row b's one new token (T = 1) goes to position pos[b]; a
 * row with pos[b] < 0 writes nothing (it is not in this step). The same
 * arithmetic as ropeCacheWriteKernel.
 */
export const ropeCacheWriteRowsKernel = declareKernel({
  label: "rope_kv_cache_write_rows",
  inputs: { q: "f32", k: "f32", v: "f32", cosT: "f32", sinT: "f32", pos: "i32" },
  outputs: { q_out: "f32", keys: "f32", values: "f32" },
  params: {
    nq: "u32",
    nk: "u32",
    Hq: "u32",
    Hkv: "u32",
    D: "u32",
    max_length: "u32",
    sign: "f32",
  },
  grid: "elements",
  workgroupSize: [64],
  helpers: /* wgsl */ `
fn rotated(x: f32, partner: f32, i: u32, H: u32) -> f32 {
  let D = params.D;
  let d = i % D;
  let b = i / (D * H);
  let c = b * D + d;
  return x * cosT[c] + partner * sinT[c] * params.sign; // rope's expression, sign 1
}`,
  main: /* wgsl */ `
  let i = flat_index(gid, nwg);
  let D = params.D; let half = D / 2u;
  if (i < params.nq) {
    let rot = select(q[i - half], -q[i + half], i % D < half);
    q_out[i] = rotated(q[i], rot, i, params.Hq);
    return;
  }
  let j = i - params.nq;
  if (j >= params.nk) { return; }
  let group = j / D; // (b, kv head)
  let at = pos[group / params.Hkv];
  if (at < 0) { return; }
  let rot = select(k[j - half], -k[j + half], j % D < half);
  let slot = (group * params.max_length + u32(at)) * D + j % D;
  keys[slot] = rotated(k[j], rot, j, params.Hkv);
  values[slot] = v[j];`,
});
