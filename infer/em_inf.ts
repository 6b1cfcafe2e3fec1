/**
 * EM-INF: inference-time logit adjustment that lowers entropy with no
 * training (EM_SPEC.md), run on the GPU over a whole batch of rows in one
 * dispatch (kernels/em_inf.ts).
 * @module
 */
import { emInfKernel } from "../kernels/em_inf.ts";
import { launch } from "../engine/launch.ts";
import { noGrad } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";

export interface EmInfOptions {
  /** Adam learning rate on the logits (default 0.1). */
  lr?: number;
  /** Adam steps at most (default 5). */
  steps?: number;
  /** Weight of KL(p0 || p) (default 0.001). */
  klWeight?: number;
  /** A row stops once its entropy is below this (default 0.3). */
  threshold?: number;
}

/** The code's defaults (EM_SPEC.md). */
export const EM_INF_DEFAULTS: Required<EmInfOptions> = {
  lr: 0.1,
  steps: 5,
  klWeight: 0.001,
  threshold: 0.3,
};

function resolve(o: EmInfOptions): Required<EmInfOptions> {
  const r = { ...EM_INF_DEFAULTS, ...o };
  if (!(r.lr > 0)) throw new Error(`emInfAdjust: lr must be > 0, got ${r.lr}`);
  if (!Number.isInteger(r.steps) || r.steps < 0) {
    throw new Error(`emInfAdjust: steps must be an integer >= 0, got ${r.steps}`);
  }
  if (!(r.klWeight >= 0)) throw new Error(`emInfAdjust: klWeight must be >= 0, got ${r.klWeight}`);
  if (!(r.threshold >= 0)) {
    throw new Error(`emInfAdjust: threshold must be >= 0, got ${r.threshold}`);
  }
  return r;
}

/** Adjusts (rows, V) logits on the GPU; returns the adjusted logits and the Adam steps each row took (GPU). */
export function emInfAdjustTensor(
  logits: Tensor,
  options: EmInfOptions = {},
): { logits: Tensor; stepsUsed: Tensor } {
  const o = resolve(options);
  if (logits.dtype !== "f32" || logits.shape.length < 1) {
    throw new Error(
      `emInfAdjust: logits must be f32 (rows, V), got [${logits.shape}] ${logits.dtype}`,
    );
  }
  const V = logits.shape.at(-1)!;
  const rows = logits.size / V;
  return noGrad(() => {
    const out = Tensor.empty(logits.shape);
    const m = Tensor.empty([rows, V]);
    const v = Tensor.empty([rows, V]);
    const used = Tensor.empty([rows], "i32");
    // Adam's bias corrections in float64, as torch computes them
    const bias = Tensor.from(
      Array.from(
        { length: Math.max(1, o.steps) },
        (_, i) => [o.lr / (1 - 0.9 ** (i + 1)), Math.sqrt(1 - 0.999 ** (i + 1))],
      )
        .flat(),
      [Math.max(1, o.steps), 2],
    );
    launch(emInfKernel, { z0: logits, bias, z: out, m, v, used }, {
      rows,
      V,
      steps: o.steps,
      klWeight: o.klWeight,
      threshold: o.threshold,
    }, rows);
    m.dispose();
    v.dispose();
    bias.dispose();
    return { logits: out, stepsUsed: used };
  });
}

/**
 * EM-INF on a (rows, V) Tensor (returns a Tensor), or on a Float32Array with
 * `rows` and `vocab` given (returns a Float32Array and the steps used).
 */
export function emInfAdjust(logits: Tensor, options?: EmInfOptions): Tensor;
export function emInfAdjust(
  logits: Float32Array,
  options: EmInfOptions & { rows: number; vocab: number },
): Promise<{ logits: Float32Array; stepsUsed: number[] }>;
export function emInfAdjust(
  logits: Tensor | Float32Array,
  options: EmInfOptions & { rows?: number; vocab?: number } = {},
): Tensor | Promise<{ logits: Float32Array; stepsUsed: number[] }> {
  if (logits instanceof Tensor) {
    const r = emInfAdjustTensor(logits, options);
    r.stepsUsed.dispose();
    return r.logits;
  }
  const { rows, vocab } = options;
  if (!rows || !vocab || rows * vocab !== logits.length) {
    throw new Error(
      `emInfAdjust: a Float32Array needs rows and vocab with rows * vocab = ${logits.length}`,
    );
  }
  return (async () => {
    const t = Tensor.from(logits, [rows, vocab]);
    const r = emInfAdjustTensor(t, options);
    const [out, used] = await Promise.all([r.logits.toArray(), r.stepsUsed.toArray()]);
    [t, r.logits, r.stepsUsed].forEach((x) => x.dispose());
    return { logits: out as Float32Array, stepsUsed: Array.from(used) };
  })();
}

/** A generate() logits processor applying EM-INF at every step. */
export function emInfProcessor(options: EmInfOptions = {}): (logits: Tensor) => Tensor {
  resolve(options);
  return (logits) => emInfAdjust(logits, options);
}

/** CPU reference of EM-INF on one row, in float64 (the algorithm of EM_SPEC.md, Adam as torch). */
export function emInfReference(
  row: ArrayLike<number>,
  options: EmInfOptions = {},
): { logits: number[]; stepsUsed: number } {
  const o = resolve(options);
  const V = row.length;
  const z = Array.from(row);
  const softmax = (x: number[]) => {
    const mx = Math.max(...x);
    const e = x.map((v) => Math.exp(v - mx));
    const s = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / s);
  };
  const p0 = softmax(z);
  const m = new Array(V).fill(0);
  const v = new Array(V).fill(0);
  let used = 0;
  for (let t = 1; t <= o.steps; t++) {
    const p = softmax(z);
    const lp = p.map((x) => Math.log(x + 1e-12));
    const H = -p.reduce((s, x, i) => s + x * lp[i], 0);
    if (H < o.threshold) break;
    const a = p.map((x, i) => -(lp[i] + x / (x + 1e-12)));
    const S = p.reduce((s, x, i) => s + x * a[i], 0);
    const bc1 = 1 - 0.9 ** t;
    const bc2 = Math.sqrt(1 - 0.999 ** t);
    for (let j = 0; j < V; j++) {
      const g = p[j] * (a[j] - S) + o.klWeight * (p[j] - p0[j]);
      m[j] = 0.9 * m[j] + 0.1 * g;
      v[j] = 0.999 * v[j] + 0.001 * g * g;
      z[j] -= (o.lr / bc1) * m[j] / (Math.sqrt(v[j]) / bc2 + 1e-8);
    }
    used = t;
  }
  return { logits: z, stepsUsed: used };
}
