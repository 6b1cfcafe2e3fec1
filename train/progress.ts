/**
 * What a training run prints: the progress line of each step, GPU memory by
 * category, and evaluation lines.
 * @module
 */

/** A number in 4 decimals, or in exponent form when very large or small. */
export function fmt(v: number): string {
  return Math.abs(v) >= 100 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : v.toFixed(4);
}

/**
 * One step's line: loss, entropy, |g|, lr, the objective's own metrics
 * (`shown`: short name -> key), rollout and update time with their tokens/s,
 * with rollout servers the weight sync's time and the rollout/trainer
 * log-prob mismatch, elapsed time and ETA.
 */
export function progressLine(
  m: Record<string, number>,
  o: { steps: number; shown: Record<string, string>; elapsed: number; eta: number },
): string {
  const own = Object.entries(o.shown).filter(([, k]) => m[k] !== undefined)
    .map(([short, k]) => `  ${short} ${fmt(m[k])}`).join("");
  return `step ${m.step}/${o.steps}  loss ${fmt(m.loss)}  entropy ${fmt(m.entropy)}  |g| ${
    fmt(m.gradNorm)
  }  lr ${m.lr.toExponential(2)}${own}  rollout ${m.rolloutSeconds.toFixed(1)}s (${
    m.rolloutTokensPerSecond.toFixed(0)
  } tok/s)  update ${m.updateSeconds.toFixed(1)}s (${m.updateTokensPerSecond.toFixed(0)} tok/s)${
    m.syncSeconds === undefined ? "" : `  sync ${m.syncSeconds.toFixed(1)}s`
  }${
    m.mismatchAbsLogp === undefined
      ? ""
      : `  rollout/trainer |dlogp| ${fmt(m.mismatchAbsLogp)} kl ${fmt(m.mismatchKl)}`
  }  elapsed ${o.elapsed.toFixed(0)}s  eta ${o.eta.toFixed(0)}s`;
}

/** GPU memory by category (`own`: the objective's, e.g. referenceBytes), and the process's RSS. */
export function memoryLine(
  step: number,
  m: Record<string, number>,
  own: Record<string, number>,
): string {
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const extra = Object.entries(own).filter(([, b]) => b > 0)
    .map(([k, b]) => `, ${k.replace(/Bytes$/, "")} ${mib(b)}`).join("");
  return `memory @ step ${step}: weights ${mib(m.weightBytes)}${
    m.adapterBytes ? ` (+ LoRA adapters ${mib(m.adapterBytes)})` : ""
  }, optimizer state ${mib(m.optimizerBytes)}${extra}, rollouts (KV cache + activations) peak ${
    mib(m.rolloutPeakBytes)
  }, update peak ${mib(m.updatePeakBytes)} (gradients ${mib(m.gradientBytes)} + activations ${
    mib(Math.max(0, m.updatePeakBytes - m.gradientBytes))
  }); pool ${mib(m.pooledBytes)}; process RSS ${mib(m.rssBytes)}`;
}

/** An evaluation's line. */
export function evalLine(step: number, metrics: Record<string, number>): string {
  return `eval @ step ${step}: ${
    Object.entries(metrics).map(([k, v]) => `${k} ${fmt(v)}`).join("  ")
  }`;
}
