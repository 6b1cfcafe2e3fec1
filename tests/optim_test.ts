import { AdamW, clipGradNorm } from "../engine/optim.ts";
import { Tensor } from "../engine/tensor.ts";
import { assertAlmostEquals } from "@std/assert";
import { assertClose, gpuTest } from "./_helpers.ts";
import { Rng } from "../engine/random.ts";

/** torch.optim.AdamW's single-tensor algorithm, in float64. */
function adamwReference(
  p: Float64Array,
  grads: Float64Array[],
  { lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weightDecay = 0.01 } = {},
): Float64Array {
  const m = new Float64Array(p.length);
  const v = new Float64Array(p.length);
  grads.forEach((g, s) => {
    const step = s + 1;
    const bc1 = 1 - beta1 ** step;
    const bc2 = 1 - beta2 ** step;
    for (let i = 0; i < p.length; i++) {
      p[i] *= 1 - lr * weightDecay;
      m[i] = beta1 * m[i] + (1 - beta1) * g[i];
      v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
      const denom = Math.sqrt(v[i]) / Math.sqrt(bc2) + eps;
      p[i] -= (lr / bc1) * (m[i] / denom);
    }
  });
  return p;
}

function randoms(n: number, seed: number, scale = 1): Float64Array {
  const r = new Rng(seed);
  return Float64Array.from({ length: n }, () => Math.fround(scale * r.normal()));
}

Deno.test({
  name: "AdamW matches torch's algorithm over 5 steps (odd size, weight decay, tiny grads)",
  ...gpuTest,
  fn: async () => {
    const n = 131;
    const init = randoms(n, 1);
    const grads = [0, 1, 2, 3, 4].map((s) => randoms(n, 10 + s, s === 3 ? 1e-6 : 1));
    const opts = { lr: 3e-2, beta1: 0.8, beta2: 0.95, eps: 1e-6, weightDecay: 0.1 };
    const p = Tensor.from(init, [n], { requiresGrad: true });
    const opt = new AdamW([p], opts);
    for (const g of grads) {
      opt.zeroGrad();
      p.grad = Tensor.from(g, [n]);
      opt.update();
    }
    const expected = adamwReference(Float64Array.from(init), grads, opts);
    assertClose(await p.toArray(), expected, { atol: 1e-6, rtol: 1e-5 }, "params after 5 steps");
    opt.zeroGrad();
    opt.dispose();
    p.dispose();
  },
});

Deno.test({
  name: "clipGradNorm() scales gradients to the max norm like torch's clip_grad_norm_",
  ...gpuTest,
  fn: async () => {
    const ga = randoms(17, 3, 2);
    const gb = randoms(130, 4, 2);
    const a = Tensor.zeros([17], { requiresGrad: true });
    const b = Tensor.zeros([130], { requiresGrad: true });
    a.grad = Tensor.from(ga, [17]);
    b.grad = Tensor.from(gb, [130]);
    const norm = Math.sqrt([...ga, ...gb].reduce((s, x) => s + x * x, 0));
    const got = clipGradNorm([a, b], 1.0);
    assertAlmostEquals(await got.item(), norm, 1e-3 * norm);
    const coef = Math.min(1, 1.0 / (norm + 1e-6));
    assertClose(await a.grad.toArray(), ga.map((x) => x * coef), { atol: 1e-6 });
    assertClose(await b.grad.toArray(), gb.map((x) => x * coef), { atol: 1e-6 });
    // under the limit: unchanged
    const small = clipGradNorm([a, b], 100);
    assertAlmostEquals(await small.item(), 1, 1e-4);
    assertClose(await a.grad.toArray(), ga.map((x) => x * coef), { atol: 1e-6 });
    [a, b, got, small].forEach((t) => {
      t.grad?.dispose();
      t.dispose();
    });
  },
});
