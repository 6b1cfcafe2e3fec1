/**
 * Gradient accumulation: forward and backward over a step's rows in
 * micro-batches, so the batch is not limited by memory, with each
 * micro-batch's loss scaled so the gradients sum to the whole batch's.
 * @module
 */
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { concat, entropy, mulScalar, sum } from "../engine/ops/mod.ts";
import { keep, noGrad, tidy } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { atTemperature, type Objective, type StepBatch } from "./objective.ts";

/** The sums a gradient pass measured (GPU scalars) and how many positions it scored. */
export interface Accumulated {
  loss: Tensor;
  /** Sums over the scored positions: entropy and the objective's statistics. */
  stats: Record<string, Tensor>;
  count: number;
}

/**
 * Forward and backward over `rows` of `batch` (default all) in micro-batches,
 * accumulating into the parameters' .grad exactly the gradient of the loss of
 * those rows together: each micro-batch's loss is divided by the divisor of
 * them all (their scored positions for "tokens", their rows for "sequences").
 */
export function accumulateGradients(
  model: CausalLM,
  batch: StepBatch,
  objective: Objective,
  microBatch: number,
  rows: number[] = Array.from({ length: batch.rows }, (_, i) => i),
  recompute = false,
): Accumulated {
  const T = batch.length;
  // scored positions are row-major: each row's are one run of batch.positions
  const first = new Array(batch.rows + 1).fill(batch.positions.length);
  for (let i = batch.positions.length - 1; i >= 0; i--) {
    first[Math.floor(batch.positions[i] / T)] = i;
  }
  for (let r = batch.rows - 1; r >= 0; r--) first[r] = Math.min(first[r], first[r + 1]);
  const count = rows.reduce((s, r) => s + first[r + 1] - first[r], 0);
  const divisor = objective.normalizer === "tokens" ? Math.max(count, 1) : rows.length;
  const losses: Tensor[] = [];
  const parts: Record<string, Tensor[]> = {};
  for (let m0 = 0; m0 < rows.length; m0 += microBatch) {
    const micro = rows.slice(m0, m0 + microBatch);
    const ids = micro.flatMap((r) => batch.ids.slice(r * T, (r + 1) * T));
    const mask = micro.flatMap((r) => batch.mask.slice(r * T, (r + 1) * T));
    // the micro-batch's scored positions: local flat indices and indices into batch.positions
    const at: number[] = [];
    const which: number[] = [];
    micro.forEach((r, k) => {
      for (let i = first[r]; i < first[r + 1]; i++) {
        at.push(batch.positions[i] - r * T + k * T);
        which.push(i);
      }
    });
    if (at.length === 0) continue;
    const [loss, sums] = tidy(() => {
      const hidden = model.hidden(Tensor.from(ids, [micro.length, T], { dtype: "i32" }), {
        attentionMask: mask,
        recompute,
      });
      const chunkSums: Record<string, Tensor[]> = {};
      const loss = model.headAt(hidden, at, (logits, from, to) => {
        const idx = which.slice(from, to);
        const n = to - from;
        const data = Object.fromEntries(
          Object.entries(batch.data).map(([k, v]) => [k, Tensor.from(idx.map((i) => v[i]), [n])]),
        );
        const targets = Tensor.from(idx.map((i) => batch.targets[i]), [n], { dtype: "i32" });
        // the distribution the responses were sampled from: softmax(z / T)
        const out = objective.positionLoss({
          logits: atTemperature(logits, batch.temperature),
          targets,
          data,
        });
        const stats = { ...out.stats };
        stats.entropy ??= noGrad(() => entropy(atTemperature(logits, batch.temperature)));
        for (const [k, v] of Object.entries(stats)) {
          (chunkSums[k] ??= []).push(noGrad(() => sum(v).view([1])));
        }
        return mulScalar(sum(out.loss), 1 / divisor);
      });
      loss.backward();
      const sums = Object.fromEntries(
        Object.entries(chunkSums).map((
          [k, xs],
        ) => [k, noGrad(() => (xs.length === 1 ? xs[0] : sum(concat(xs, 0)).view([1])))]),
      );
      return [noGrad(() => loss.view([1])), sums] as const;
    });
    losses.push(keep(loss));
    for (const [k, v] of Object.entries(sums)) (parts[k] ??= []).push(keep(v));
  }
  const total = (xs: Tensor[]) =>
    noGrad(() => {
      if (xs.length === 0) return keep(Tensor.zeros([1]));
      const s = xs.length === 1 ? xs[0].view([1]) : sum(concat(xs, 0));
      xs.forEach((x) => x.dispose());
      return keep(s);
    });
  const stats = Object.fromEntries(Object.entries(parts).map(([k, xs]) => [k, total(xs)]));
  return { loss: total(losses), stats, count };
}
