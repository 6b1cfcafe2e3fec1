/**
 * A run's saved state: resuming reproduces the uninterrupted run bit for bit
 * (EM-FT; EM-RL with its reference and rollout RNG), and optimizer state is
 * restored only into the parameters it was saved for.
 */
import { assert, assertEquals, assertRejects } from "@std/assert";
import { loadModel } from "../engine/model/checkpoint.ts";
import { AdamW } from "../engine/optim.ts";
import { loadOptimizer, saveOptimizer } from "../engine/optim_files.ts";
import { Tensor } from "../engine/tensor.ts";
import { DemoSource } from "../demo/source.ts";
import type { TrainOptions } from "../train/options.ts";
import { train } from "../train/trainer.ts";
import { gpuTest, tinyModelWithTokenizer, weights } from "./_helpers.ts";

const quick: Partial<TrainOptions> = {
  batchSize: 4,
  nSamples: 2,
  microBatch: 3,
  maxNewTokens: 4,
  lr: 3e-3,
  seed: 7,
};

const cases: { name: string; options: Partial<TrainOptions>; first: number }[] = [
  { name: "EM-FT, 2 + 2 steps", options: { steps: 4 }, first: 2 },
  {
    name: "EM-RL with a KL reference and 2 PPO epochs, 1 + 2 steps",
    options: { method: "em-rl", steps: 3, klCoef: 0.05, ppoEpochs: 2, microBatch: 8 },
    first: 1,
  },
];

for (const c of cases) {
  Deno.test({
    name: `resuming gives the same weights as an uninterrupted run: ${c.name}`,
    ...gpuTest,
    fn: async () => {
      const dir = await tinyModelWithTokenizer("resume_");
      const o = { ...quick, ...c.options };
      const straight = await loadModel(dir, { trainable: true });
      await train(straight, new DemoSource(3), { ...o, outDir: `${dir}/a` }, { log: () => {} });
      const a = await weights(straight);
      straight.dispose();
      const first = await loadModel(dir, { trainable: true });
      await train(first, new DemoSource(3), { ...o, steps: c.first, outDir: `${dir}/b` }, {
        log: () => {},
      });
      first.dispose();
      const resumed = await loadModel(`${dir}/b/checkpoint`, { trainable: true });
      const r = await train(resumed, new DemoSource(3), { ...o, outDir: `${dir}/b` }, {
        log: () => {},
      }, `${dir}/b/checkpoint`);
      const rest = Array.from({ length: o.steps! - c.first }, (_, i) => c.first + 1 + i);
      assertEquals(r.history.map((h) => h.step), rest);
      const b = await weights(resumed);
      assertEquals(b.length, a.length);
      assert(a.every((v, i) => v === b[i]), "weights differ after resume");
      resumed.dispose();
      await Deno.remove(dir, { recursive: true });
    },
  });
}

Deno.test({
  name: "loadOptimizer() restores saved moments and step, and refuses state of other parameters",
  ...gpuTest,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "adamw_state_" });
    const p = [Tensor.randn([3, 4], { seed: 1 }), Tensor.randn([5], { seed: 2 })];
    p.forEach((t) => t.grad = Tensor.randn(t.shape, { seed: 3 }));
    const opt = new AdamW(p, { lr: 0.1 });
    opt.update();
    opt.update();
    await saveOptimizer(opt, `${dir}/opt.safetensors`);
    const back = new AdamW(p);
    await loadOptimizer(back, `${dir}/opt.safetensors`);
    assertEquals(back.step, 2);
    for (let i = 0; i < 2; i++) {
      assertEquals(await back.m[i].toArray(), await opt.m[i].toArray());
      assertEquals(await back.v[i].toArray(), await opt.v[i].toArray());
    }
    // another shape (a LoRA slot of another rank), or another number of parameters
    const other = new AdamW([Tensor.zeros([4, 4]), Tensor.zeros([5])]);
    await assertRejects(
      () => loadOptimizer(other, `${dir}/opt.safetensors`),
      Error,
      "m.0 is F32 [3,4], but parameter 0 is F32 [4,4]",
    );
    await assertRejects(
      () => loadOptimizer(new AdamW([p[0]]), `${dir}/opt.safetensors`),
      Error,
      "optimizer state for 2 parameter tensors, but this run trains 1",
    );
    [opt, back, other].forEach((o) => o.dispose());
    await Deno.remove(dir, { recursive: true });
  },
});
