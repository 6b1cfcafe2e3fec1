/**
 * The adaptive-temperature baseline beside EM-INF (EM_SPEC.md), on the GPU.
 * Self-consistency is a majority vote (answer.ts) over sampled answers.
 * @module
 */
import { adaptiveTemperatureKernel } from "../kernels/adaptive_temperature.ts";
import { launch } from "../engine/launch.ts";
import { noGrad } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";

export interface AdaptiveTemperatureOptions {
  /** Target entropy as a fraction of the original (EM_SPEC: 0.4 to 0.6; default 0.5). */
  alpha?: number;
  /** Floor of the target entropy in nats (default 0.1). */
  delta?: number;
}

/** Logits divided by each row's adaptive temperature; also returns the temperatures. */
export function adaptiveTemperature(
  logits: Tensor,
  options: AdaptiveTemperatureOptions = {},
): { logits: Tensor; tau: Tensor } {
  const alpha = options.alpha ?? 0.5;
  const delta = options.delta ?? 0.1;
  if (!(alpha > 0 && alpha <= 1)) {
    throw new Error(`adaptiveTemperature: alpha must be in (0, 1], got ${alpha}`);
  }
  if (!(delta >= 0)) throw new Error(`adaptiveTemperature: delta must be >= 0, got ${delta}`);
  const V = logits.shape.at(-1)!;
  const rows = logits.size / V;
  return noGrad(() => {
    const out = Tensor.empty(logits.shape);
    const tau = Tensor.empty([rows]);
    launch(
      adaptiveTemperatureKernel,
      { z: logits, out, taus: tau },
      { rows, V, alpha, delta },
      rows,
    );
    return { logits: out, tau };
  });
}

/** A generate() logits processor applying the adaptive temperature. */
export function adaptiveTemperatureProcessor(
  options: AdaptiveTemperatureOptions = {},
): (logits: Tensor) => Tensor {
  return (logits) => {
    const r = adaptiveTemperature(logits, options);
    r.tau.dispose();
    return r.logits;
  };
}

/** CPU reference of the adaptive temperature of one row (float64, same bisection). */
export function adaptiveTemperatureReference(
  row: ArrayLike<number>,
  options: AdaptiveTemperatureOptions = {},
): number {
  const alpha = options.alpha ?? 0.5;
  const delta = options.delta ?? 0.1;
  const z = Array.from(row);
  const mx = Math.max(...z);
  const H = (tau: number) => {
    const c = z.map((v) => (v - mx) / tau);
    const e = c.map(Math.exp);
    const s = e.reduce((a, b) => a + b, 0);
    return Math.max(Math.log(s) - e.reduce((a, x, i) => a + (x ? x * c[i] : 0), 0) / s, 0);
  };
  const goal = Math.max(alpha * H(1), delta);
  if (H(1) <= goal) return 1;
  let lo = 0.01;
  let hi = 1;
  for (let i = 0; i < 30; i++) {
    const mid = 0.5 * (lo + hi);
    if (H(mid) <= goal) lo = mid;
    else hi = mid;
  }
  return lo;
}
