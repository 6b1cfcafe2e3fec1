/**
 * An engine demo that runs until EM-FT lands: a two-layer MLP learns to
 * classify points of three interleaved spirals, with cross-entropy through the
 * fused token log-prob, AdamW and gradient clipping, printing the loss falling.
 * @module
 */
import * as ops from "../engine/ops/mod.ts";
import { AdamW, clipGradNorm } from "../engine/optim.ts";
import { Rng } from "../engine/random.ts";
import { keep, noGrad, tidy } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";

export interface MlpDemoOptions {
  steps: number;
  hidden: number;
  lr: number;
  batch: number;
  seed: number;
  log?: (line: string) => void;
}

/** n points of three spirals: inputs (n, 2), labels (n). */
export function spirals(n: number, rng: Rng): { x: Float32Array; y: Int32Array } {
  const x = new Float32Array(n * 2);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const c = rng.int(3);
    const r = rng.next();
    const angle = c * (2 * Math.PI / 3) + r * 4 + 0.2 * rng.normal();
    x[2 * i] = r * Math.cos(angle);
    x[2 * i + 1] = r * Math.sin(angle);
    y[i] = c;
  }
  return { x, y };
}

/** Trains the MLP; returns the first and last loss and the held-out accuracy. */
export async function runMlpDemo(
  o: MlpDemoOptions,
): Promise<{ firstLoss: number; lastLoss: number; accuracy: number }> {
  const log = o.log ?? console.log;
  const rng = new Rng(o.seed);
  const w1 = keep(Tensor.randn([2, o.hidden], { seed: o.seed + 1, std: 1, requiresGrad: true }));
  const b1 = keep(Tensor.zeros([o.hidden], { requiresGrad: true }));
  const w2 = keep(
    Tensor.randn([o.hidden, 3], {
      seed: o.seed + 2,
      std: 1 / Math.sqrt(o.hidden),
      requiresGrad: true,
    }),
  );
  const params = [w1, b1, w2];
  const opt = new AdamW(params, { lr: o.lr, weightDecay: 0 });
  const forward = (x: Tensor) => ops.matmul(ops.silu(ops.add(ops.matmul(x, w1), b1)), w2); // (B, 3)
  const start = performance.now();
  let firstLoss = NaN;
  let lastLoss = NaN;
  for (let step = 1; step <= o.steps; step++) {
    const data = spirals(o.batch, rng);
    const loss = tidy(() => {
      const x = Tensor.from(data.x, [o.batch, 2]);
      const y = Tensor.from(data.y, [o.batch], { dtype: "i32" });
      opt.zeroGrad();
      const l = ops.neg(ops.mean(ops.tokenLogProb(forward(x), y)));
      l.backward();
      clipGradNorm(params, 1.0);
      opt.update();
      return l;
    });
    if (step === 1 || step % 25 === 0 || step === o.steps) {
      const v = await loss.item();
      if (step === 1) firstLoss = v;
      lastLoss = v;
      const secs = (performance.now() - start) / 1000;
      const eta = (secs / step) * (o.steps - step);
      log(
        `step ${String(step).padStart(4)}/${o.steps}  loss ${v.toFixed(4)}  ${
          (step / secs).toFixed(1)
        } steps/s  elapsed ${secs.toFixed(1)}s  eta ${eta.toFixed(1)}s`,
      );
    }
    loss.dispose();
  }
  // held-out accuracy
  const test = spirals(1000, new Rng(o.seed + 999));
  const logits = noGrad(() => tidy(() => forward(Tensor.from(test.x, [1000, 2]))));
  const z = await logits.toArray();
  logits.dispose();
  let correct = 0;
  for (let i = 0; i < 1000; i++) {
    const row = [z[3 * i], z[3 * i + 1], z[3 * i + 2]];
    if (row.indexOf(Math.max(...row)) === test.y[i]) correct++;
  }
  opt.zeroGrad();
  opt.dispose();
  params.forEach((p) => p.dispose());
  return { firstLoss, lastLoss, accuracy: correct / 1000 };
}
