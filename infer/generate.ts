/**
 * Batched generation with a KV cache on the GPU: prompts of different lengths
 * are left-padded, positions come from the mask, each step samples on the GPU
 * and feeds the sampled ids straight back; only the new ids are read back.
 * @module
 */
import { device } from "../engine/device.ts";
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { entropy, reshape, slice } from "../engine/ops/mod.ts";
import { Rng } from "../engine/random.ts";
import { keep, noGrad, tidy } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { drawUniforms, sampleTokens, type SamplingOptions } from "./sampling.ts";

/** Prompt tokens per prefill pass by default. */
export const PREFILL_CHUNK = 512;

/** A hook that may rewrite each step's last-position logits (B, V) before sampling (e.g. EM-INF). */
export type LogitsProcessor = (logits: Tensor, step: number) => Tensor;

export interface GenerateOptions extends SamplingOptions {
  maxNewTokens?: number;
  seed?: number;
  /** Ids that end a sequence (default: the model's generation config). */
  eosTokenIds?: number[];
  /** Id fed for padding (default: the model's pad id, else the first eos id, else 0). */
  padTokenId?: number;
  /**
   * Called after every step with the new id of each row (-1 where already finished), and with
   * returnEntropies each row's entropy at that step (read back with the ids, no extra wait).
   */
  onStep?: (ids: number[], step: number, entropies?: number[]) => void;
  logitsProcessor?: LogitsProcessor;
  /**
   * Steps sampled between readbacks: by default 4, doubling after each read to 16. A number
   * fixes it; 1 reads every token back at once (the reference the tests compare with).
   */
  readEvery?: number;
  /** Also return, per generated token, the entropy of the model's next-token distribution (temperature 1, after any logitsProcessor), computed on the GPU and read back with the ids. */
  returnEntropies?: boolean;
  /**
   * Prompt tokens per prefill pass (default 512): a longer prompt goes through the KV cache in
   * passes of this many, so the prefill's working set is one pass's, not the whole prompt's.
   */
  prefillChunk?: number;
}

export interface GenerateResult {
  /** Generated ids per sequence (the eos id included when one ended it). */
  tokens: number[][];
  /** True where an eos ended the sequence. */
  finished: boolean[];
  /** The padded prompt length P (prompts occupy columns [0, P)). */
  promptLength: number;
  steps: number;
  /** With returnEntropies: per sequence, the entropy of the distribution each generated token was drawn from. */
  entropies?: number[][];
}

/** Left-pads prompts to a common length: ids and mask (B, P), row-major. */
export function leftPad(
  prompts: number[][],
  pad: number,
): { ids: number[]; mask: number[]; length: number } {
  const length = Math.max(...prompts.map((p) => p.length));
  const ids: number[] = [];
  const mask: number[] = [];
  for (const p of prompts) {
    for (let i = 0; i < length - p.length; i++) {
      ids.push(pad);
      mask.push(0);
    }
    ids.push(...p);
    p.forEach(() => mask.push(1));
  }
  return { ids, mask, length };
}

/** A row-major (B, P) array as B rows. */
function rowsOf(flat: number[], P: number): number[][] {
  return Array.from({ length: flat.length / P }, (_, b) => flat.slice(b * P, (b + 1) * P));
}

/** Thrown when a step's logits cannot be sampled (NaN or +Inf): names the step and the row. */
export class NonFiniteLogitsError extends Error {
  constructor(readonly step: number, readonly row: number) {
    super(
      `generate: step ${step}, row ${row}: the logits are NaN or Inf, so no token can be sampled. ` +
        "Likely cause: non-finite weights (a corrupt or badly converted checkpoint; loadModel checks " +
        "the weights unless checkFinite is false) or an overflow in a logits processor",
    );
    this.name = "NonFiniteLogitsError";
  }
}

/** Generates continuations of token-id prompts. */
export async function generate(
  model: CausalLM,
  prompts: number[][],
  options: GenerateOptions = {},
): Promise<GenerateResult> {
  if (prompts.length === 0) throw new Error("generate: no prompts");
  const maxPos = model.config.maxPositionEmbeddings;
  prompts.forEach((p, i) => {
    if (p.length === 0) throw new Error(`generate: prompt ${i} encodes to no tokens`);
    if (p.length > maxPos) {
      throw new Error(
        `generate: prompt ${i} has ${p.length} tokens, more than the model's max_position_embeddings (${maxPos})`,
      );
    }
  });
  const maxNew = options.maxNewTokens ?? 64;
  if (!Number.isInteger(maxNew) || maxNew < 1) {
    throw new Error(`generate: maxNewTokens must be >= 1, got ${maxNew}`);
  }
  const eos = new Set(options.eosTokenIds ?? model.generation.eosTokenIds);
  const pad = options.padTokenId ?? model.generation.padTokenId ?? [...eos][0] ?? 0;
  const vocab = model.config.vocabSize;
  for (const p of prompts) {
    const bad = p.find((t) => !Number.isInteger(t) || t < 0 || t >= vocab);
    if (bad !== undefined) {
      throw new Error(`generate: token id ${bad} is outside the vocabulary (0..${vocab - 1})`);
    }
  }
  const chunk = options.prefillChunk ?? PREFILL_CHUNK;
  if (!Number.isInteger(chunk) || chunk < 1) {
    throw new Error(`generate: prefillChunk must be >= 1, got ${chunk}`);
  }
  const B = prompts.length;
  const { ids, mask: promptMask, length: P } = leftPad(prompts, pad);
  const rng = new Rng(options.seed ?? 0);
  const cache = model.createCache(B, P + maxNew);
  const tokens: number[][] = prompts.map(() => []);
  const finished = new Array(B).fill(false);
  // mask (B, S) for the S tokens cached after each step, kept row-major per row
  const rows = rowsOf(promptMask, P);
  const columns = (from: number, to: number) =>
    Tensor.from(rowsOf(ids, P).flatMap((r) => r.slice(from, to)), [B, to - from], {
      dtype: "i32",
    });
  // every pass but the last only fills the cache; the last one is step 0's input
  let prefilled = 0;
  try {
    for (; P - prefilled > chunk; prefilled += chunk) {
      const end = prefilled + chunk;
      const mask = rows.flatMap((r) => r.slice(0, end));
      noGrad(() =>
        tidy(() => {
          model.hidden(columns(prefilled, end), { attentionMask: mask, cache });
        })
      );
    }
  } catch (e) {
    cache.dispose();
    throw e;
  }
  let input: Tensor = keep(columns(prefilled, P));
  const unusable = keep(Tensor.zeros([B], { dtype: "i32" })); // (B) step + 1 of a NaN/Inf row
  let steps = 0;
  const stepEntropies: Tensor[] = []; // (B) per step, not read back yet
  const entropyRows: number[][] = []; // per step, each row's entropy, once read
  // Sampled ids feed the next step on the GPU, and nothing the host adds to a step (mask,
  // positions, uniforms) depends on them, so the loop runs ahead and reads ids back in groups:
  // one wait per group instead of one per token. Groups grow (4, 8, 16) so that a run that
  // ends early wastes few steps; steps past the last finished row are discarded.
  const unread: Tensor[] = []; // (B, 1) ids of steps not read back yet
  let group = options.readEvery ?? 4;
  const grow = options.readEvery === undefined;
  /** Reads the unread steps' ids; returns true when every row has finished. */
  const readBack = async (): Promise<boolean> => {
    // one readback for the whole group: the flags and every unread step's ids
    const hs = stepEntropies.splice(0, unread.length); // the same steps' entropies
    let raw: ArrayBuffer[];
    try {
      raw = await device().readMany(
        [unusable, ...unread, ...hs].map((t) => ({ buffer: t.buffer, bytes: t.byteLength })),
      );
    } finally {
      hs.forEach((t) => t.dispose());
    }
    const [bad, ...all] = raw.slice(0, 1 + unread.length).map((r) => new Int32Array(r));
    raw.slice(1 + unread.length).forEach((r) => entropyRows.push(Array.from(new Float32Array(r))));
    unread.forEach((t) => t.dispose());
    unread.length = 0;
    for (const newIds of all) {
      const step = steps++;
      const reported = Array.from(newIds, (id, b) => {
        if (finished[b]) return -1;
        // a NaN/Inf row matters only while the row is still generating
        if (bad[b] > 0 && bad[b] - 1 <= step) throw new NonFiniteLogitsError(bad[b] - 1, b);
        tokens[b].push(id);
        if (eos.has(id)) finished[b] = true;
        return id;
      });
      options.onStep?.(reported, step, entropyRows[step]);
      if (finished.every(Boolean)) return true;
    }
    return false;
  };
  try {
    for (let step = 0; step < maxNew; step++) {
      const T = input.shape[1];
      const maskFlat = rows.flat();
      const next = noGrad(() =>
        tidy(() => {
          // only the last position's logits are needed: the head runs on (B, 1, C)
          const hidden = model.hidden(input, { attentionMask: maskFlat, cache }); // (B, T, C)
          const lastHidden = T === 1 ? hidden : slice(hidden, 1, T - 1, T);
          let last = reshape(model.head(lastHidden), [B, vocab]); // (B, V)
          if (options.logitsProcessor) last = options.logitsProcessor(last, step);
          if (options.returnEntropies) stepEntropies.push(keep(entropy(last)));
          return sampleTokens(last, options, drawUniforms(rng, B), { flags: unusable, step });
        })
      );
      input.dispose();
      input = keep(reshape(next, [B, 1]));
      unread.push(keep(next));
      rows.forEach((r) => r.push(1));
      if (unread.length >= group || step === maxNew - 1) {
        if (await readBack()) break;
        if (grow) group = Math.min(16, group * 2);
      }
    }
  } finally {
    input.dispose();
    unusable.dispose();
    unread.forEach((t) => t.dispose());
    stepEntropies.forEach((t) => t.dispose());
    cache.dispose();
  }
  // every step's entropies were read with its ids
  const entropies = options.returnEntropies
    ? tokens.map((row, b) => row.map((_, s) => entropyRows[s][b]))
    : undefined;
  return { tokens, finished, promptLength: P, steps, entropies };
}
