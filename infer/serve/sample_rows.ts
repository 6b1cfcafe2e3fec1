/**
 * One step's sampling for the rows of a batch, each as its request asks:
 * EM-INF or adaptive temperature on its logits, its own sampling settings and
 * seeded uniform, and the log-probs, entropies and top alternatives it wants.
 * @module
 */
import { entropy, logSoftmax, mul, tokenLogProb, where } from "../../engine/ops/mod.ts";
import { keep } from "../../engine/scope.ts";
import { Tensor } from "../../engine/tensor.ts";
import { adaptiveTemperatureProcessor } from "../baselines.ts";
import { emInfProcessor } from "../em_inf.ts";
import { sampleTokensPerRow } from "../sampling.ts";
import type { Sequence } from "./sequence.ts";

/** Sampled ids of some rows, and what those rows asked for, on the GPU. */
export interface ReadPart {
  /** The sequence of each row (null: not sampled for in this part). */
  rows: (Sequence | null)[];
  ids: Tensor;
  logprob: Tensor | null;
  entropy: Tensor | null;
  /** (rows, V) log-probs, for top alternatives. */
  top: Tensor | null;
}

/**
 * Processes each row's logits as its request asks (EM-INF, adaptive
 * temperature), samples with each row's settings and uniform, and computes
 * the log-probs and entropies rows asked for. Null rows are not sampled for.
 */
export function sampleRows(logits: Tensor, rows: (Sequence | null)[]): ReadPart {
  const n = rows.length;
  let z = logits;
  // each distinct processor setting runs on the whole batch; its rows take their own result
  const settings = new Map<string, { rows: boolean[]; apply: (z: Tensor) => Tensor }>();
  rows.forEach((s, r) => {
    const p = s?.request.params;
    const kind = p?.emInf ? "em-inf" : p?.adaptive ? "adaptive" : null;
    if (!p || !kind) return;
    const key = `${kind} ${JSON.stringify(kind === "em-inf" ? p.emInf : p.adaptive)}`;
    const e = settings.get(key) ?? {
      rows: new Array(n).fill(false),
      apply: kind === "em-inf"
        ? emInfProcessor(p.emInf!)
        : adaptiveTemperatureProcessor(p.adaptive!),
    };
    e.rows[r] = true;
    settings.set(key, e);
  });
  for (const { rows: which, apply } of settings.values()) {
    const processed = apply(z);
    z = which.every(Boolean)
      ? processed
      : where(Tensor.from(which.map((b) => (b ? 1 : 0)), [n, 1]), processed, z);
  }
  const params = rows.map((s) => s?.request.params ?? null);
  const ids = keep(sampleTokensPerRow(
    z,
    params.map((p) => p ?? { greedy: true }),
    rows.map((s) => (s ? s.rng.next() : 0)),
  ));
  const part: ReadPart = { rows, ids, logprob: null, entropy: null, top: null };
  const wants = {
    logprob: params.some((p) => p && p.logprobs !== null),
    entropy: params.some((p) => p?.entropy),
    top: params.some((p) => p && (p.logprobs ?? 0) > 0),
  };
  if (wants.logprob || wants.entropy || wants.top) {
    // the distribution sampled from: softmax(z / T) of the processed logits
    const invT = params.map((p) => {
      const t = p?.temperature ?? 1;
      return p && !p.greedy && t > 0 ? 1 / t : 1;
    });
    const scaled = mul(z, Tensor.from(invT, [n, 1]));
    if (wants.logprob) part.logprob = keep(tokenLogProb(scaled, ids));
    if (wants.entropy) part.entropy = keep(entropy(scaled));
    if (wants.top) part.top = keep(logSoftmax(scaled));
  }
  return part;
}

/** Items grouped by a key, in first-seen order. */
export function groupBy<T, K>(items: T[], key: (t: T) => K): T[][] {
  const m = new Map<K, T[]>();
  for (const t of items) {
    const k = key(t);
    m.set(k, [...(m.get(k) ?? []), t]);
  }
  return [...m.values()];
}

/** The `k` most likely tokens of a row of log-probs. */
export function topK(row: Float32Array, k: number): { id: number; logprob: number }[] {
  const best: { id: number; logprob: number }[] = [];
  for (let i = 0; i < row.length; i++) {
    if (best.length < k || row[i] > best[best.length - 1].logprob) {
      best.push({ id: i, logprob: row[i] });
      best.sort((a, b) => b.logprob - a.logprob);
      if (best.length > k) best.pop();
    }
  }
  return best;
}
