/**
 * Next-token sampling on the GPU (kernels/sample.ts) and its CPU reference.
 * @module
 */
import { SAMPLE_WG, sampleKernel } from "../kernels/sample.ts";
import { launch } from "../engine/launch.ts";
import type { Rng } from "../engine/random.ts";
import { Tensor } from "../engine/tensor.ts";

/** How to pick the next token. temperature 0 (or greedy) is argmax. */
export interface SamplingOptions {
  greedy?: boolean;
  temperature?: number;
  /** Keep the k most likely tokens (0 = off). */
  topK?: number;
  /** Keep the smallest set of most likely tokens with this much mass (1 = off). */
  topP?: number;
}

function resolved(
  o: SamplingOptions,
): { greedy: boolean; temperature: number; topK: number; topP: number } {
  const temperature = o.temperature ?? 1;
  const topK = o.topK ?? 0;
  const topP = o.topP ?? 1;
  if (!(temperature >= 0)) {
    throw new Error(`sampling: temperature must be >= 0, got ${temperature}`);
  }
  if (!Number.isInteger(topK) || topK < 0) {
    throw new Error(`sampling: topK must be a non-negative integer, got ${topK}`);
  }
  if (!(topP > 0 && topP <= 1)) throw new Error(`sampling: topP must be in (0, 1], got ${topP}`);
  return { greedy: o.greedy === true || temperature === 0, temperature, topK, topP };
}

/** Where sampleTokens reports rows of logits it cannot sample: NaN, +Inf, or no finite logit (-Inf bans a token). */
export interface NonFiniteReport {
  /** (rows) i32, zero-initialised: such a row gets `step + 1` the first time. */
  flags: Tensor;
  /** The decoding step written into `flags` (default 0). */
  step?: number;
}

/**
 * One token id per row of logits (rows, V), picked on the GPU; `uniforms`
 * (one per row, in [0, 1)) make it reproducible. Returns ids (rows) i32,
 * always inside [0, V): a row with NaN or +Inf logits gets id 0 and is flagged
 * in `report.flags`, which the caller must check (generate() does).
 */
export function sampleTokens(
  logits: Tensor,
  options: SamplingOptions,
  uniforms: ArrayLike<number>,
  report?: NonFiniteReport,
): Tensor {
  const o = resolved(options);
  const V = logits.shape.at(-1)!;
  const rows = logits.size / V;
  if (uniforms.length !== rows) {
    throw new Error(`sampleTokens: ${uniforms.length} uniforms for ${rows} rows`);
  }
  if (report && report.flags.size !== rows) {
    throw new Error(`sampleTokens: report.flags has ${report.flags.size} entries for ${rows} rows`);
  }
  const u = Tensor.from(uniforms, [rows]);
  const ids = Tensor.empty([rows], "i32");
  const flags = report?.flags ?? Tensor.zeros([rows], { dtype: "i32" });
  launch(sampleKernel(false), { z: logits, u, ids, bad: flags }, {
    rows,
    V,
    greedy: o.greedy ? 1 : 0,
    temperature: o.temperature || 1,
    top_k: o.topK,
    top_p: o.topP,
    step: report?.step ?? 0,
  }, rows);
  u.dispose();
  if (!report) flags.dispose();
  return ids;
}

/**
 * sampleTokens with each row's own settings (a server's batch of requests):
 * the same arithmetic, so a row samples what it would alone.
 */
export function sampleTokensPerRow(
  logits: Tensor,
  settings: SamplingOptions[],
  uniforms: ArrayLike<number>,
  report?: NonFiniteReport,
): Tensor {
  const V = logits.shape.at(-1)!;
  const rows = logits.size / V;
  if (uniforms.length !== rows || settings.length !== rows) {
    throw new Error(
      `sampleTokensPerRow: ${settings.length} settings and ${uniforms.length} uniforms for ${rows} rows`,
    );
  }
  const rp = Tensor.from(
    settings.flatMap((o) => {
      const r = resolved(o);
      return [r.greedy ? 1 : 0, r.temperature || 1, r.topK, r.topP];
    }),
    [rows, 4],
  );
  const u = Tensor.from(uniforms, [rows]);
  const ids = Tensor.empty([rows], "i32");
  const flags = report?.flags ?? Tensor.zeros([rows], { dtype: "i32" });
  // short rows (small vocabularies) take a small workgroup: 128 threads would mostly idle
  const wg = V <= 512 ? 16 : SAMPLE_WG;
  launch(sampleKernel(true, wg), { z: logits, u, rp, ids, bad: flags }, {
    rows,
    V,
    greedy: 0,
    temperature: 1,
    top_k: 0,
    top_p: 1,
    step: report?.step ?? 0,
  }, rows);
  [u, rp].forEach((t) => t.dispose());
  if (!report) flags.dispose();
  return ids;
}

/** Uniforms for one decoding step from a seeded generator. */
export function drawUniforms(rng: Rng, rows: number): number[] {
  return Array.from({ length: rows }, () => rng.next());
}

/**
 * CPU reference of sampleTokens for one row: the same keep-set (top-k, then the
 * smallest top-p set) and the same inverse CDF in index order.
 */
export function sampleReference(
  row: ArrayLike<number>,
  options: SamplingOptions,
  u: number,
): number {
  const o = resolved(options);
  const z = Array.from(row);
  const m = Math.max(...z);
  if (o.greedy) return z.indexOf(m);
  const order = z.map((v, i) => [v, i]).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  let kept = order;
  if (o.topK > 0 && o.topK < z.length) {
    const t = order[o.topK - 1][0];
    kept = order.filter(([v]) => v >= t);
  }
  const w = (v: number) => Math.exp((v - m) / o.temperature);
  if (o.topP < 1) {
    const total = kept.reduce((s, [v]) => s + w(v), 0);
    let acc = 0;
    let n = 0;
    while (n < kept.length && acc < o.topP * total) acc += w(kept[n++][0]);
    const t = kept[n - 1][0];
    kept = kept.filter(([v]) => v >= t);
  }
  const keep = new Set(kept.map(([, i]) => i));
  const total = kept.reduce((s, [v]) => s + w(v), 0);
  let rest = u * total;
  let pick = -1;
  for (let j = 0; j < z.length; j++) {
    if (!keep.has(j)) continue;
    pick = j;
    if (rest < w(z[j])) break;
    rest -= w(z[j]);
  }
  return pick;
}
