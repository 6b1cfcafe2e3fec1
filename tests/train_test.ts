/** The trainer: its loss path against transformers, runs that learn, resume, divergence, checkpoints. */
import { loadModel } from "../engine/model/checkpoint.ts";
import { toFloat32 } from "../engine/safetensors.ts";
import { noGrad, tidy } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { device } from "../engine/device.ts";
import { DemoSource } from "../demo/source.ts";
import { emFtObjective } from "../train/em_ft.ts";
import { scoredBatch } from "../train/objective.ts";
import { accumulateGradients } from "../train/accumulate.ts";
import { DivergedError, train } from "../train/trainer.ts";
import { learningRate, type TrainOptions } from "../train/options.ts";
import { packSequences } from "../train/objective.ts";
import { assert, assertAlmostEquals, assertEquals, assertRejects } from "@std/assert";
import {
  assertClose,
  fixturePromptsAndResponses,
  gpuTest,
  tinyModelWithTokenizer,
} from "./_helpers.ts";

const HF = new URL("./fixtures/hf/", import.meta.url).pathname;

Deno.test({
  name:
    "the trainer's EM-FT path (packing, masking, micro-batches of 1) gives transformers' loss and gradients",
  ...gpuTest,
  fn: async () => {
    const model = await loadModel(`${HF}qwen2-tiny`, { trainable: true });
    // rebuild the batch from prompts and responses, as the trainer does
    const { prompts, responses, ids, mask, tensors } = await fixturePromptsAndResponses(
      "qwen2-tiny",
    );
    const batch = packSequences(prompts, responses, 0);
    assertEquals(batch.ids, Array.from(ids));
    assertEquals(batch.mask, Array.from(mask));
    const acc = accumulateGradients(
      model,
      scoredBatch(batch),
      emFtObjective({ nSamples: 1, reduce: "mean" }),
      1,
    );
    assertAlmostEquals(await acc.loss.item(), toFloat32(tensors.get("loss")!)[0], 1e-5);
    for (const p of model.parameters) {
      const want = toFloat32(tensors.get(`grad.${p.name}`)!);
      const got = Array.from(await p.chunks[0].grad!.toArray());
      const norm = Math.sqrt(want.reduce((s, x) => s + x * x, 0));
      const diff = Math.sqrt(got.reduce((s, x, i) => s + (x - want[i]) ** 2, 0));
      assert(diff <= 1e-3 * norm, `grad of ${p.name}: ${diff} > 1e-3 x ${norm}`);
    }
    model.dispose();
  },
});

Deno.test("learningRate() warms up linearly, then stays constant or follows a cosine to zero", () => {
  const o = { lr: 1, warmup: 4, steps: 12 };
  assertEquals([1, 2, 4, 8].map((s) => learningRate({ ...o, schedule: "constant" }, s)), [
    0.25,
    0.5,
    1,
    1,
  ]);
  const cos = [4, 8, 12].map((s) => learningRate({ ...o, schedule: "cosine" }, s));
  assertClose(cos, [1, 0.5, 0], { atol: 1e-12 });
});

const quick: Partial<TrainOptions> = {
  steps: 4,
  batchSize: 4,
  nSamples: 2,
  microBatch: 3,
  maxNewTokens: 4,
  lr: 3e-3,
  seed: 7,
};

Deno.test({
  name: "a short EM-FT run lowers the mean response entropy; an SFT run lowers the cross-entropy",
  ...gpuTest,
  fn: async () => {
    const dir = await tinyModelWithTokenizer();
    for (const method of ["em-ft", "sft"] as const) {
      const model = await loadModel(dir, { trainable: true });
      const r = await train(model, new DemoSource(1), {
        ...quick,
        method,
        steps: 6,
        outDir: `${dir}/${method}`,
      }, {
        log: () => {},
      });
      const first = r.history[0];
      const last = r.history.at(-1)!;
      if (method === "em-ft") {
        assert(last.entropy < first.entropy, `entropy ${first.entropy} -> ${last.entropy}`);
      } else assert(last.loss < first.loss, `cross-entropy ${first.loss} -> ${last.loss}`);
      const lines = (await Deno.readTextFile(`${dir}/${method}/metrics.jsonl`)).trim().split("\n");
      assertEquals(lines.length, 6);
      model.dispose();
    }
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "a NaN in the model stops the run before updating and leaves the last checkpoint loadable",
  ...gpuTest,
  fn: async () => {
    const dir = await tinyModelWithTokenizer();
    const model = await loadModel(dir, { trainable: true });
    const err = await assertRejects(
      () =>
        train(
          model,
          new DemoSource(5),
          { ...quick, steps: 5, saveEvery: 1, outDir: `${dir}/run` },
          {
            log: () => {},
            beforeStep: (step, m) => {
              if (step === 3) {
                const w = m.parameter("model.norm.weight")!.chunks[0];
                device().write(w.buffer, new Float32Array(w.size).fill(NaN));
              }
            },
          },
        ),
      DivergedError,
      "step 3",
    );
    assert(err.message.includes(`${dir}/run/checkpoint`), err.message);
    model.dispose();
    const state = JSON.parse(await Deno.readTextFile(`${dir}/run/checkpoint/trainer_state.json`));
    assertEquals(state.step, 2);
    const back = await loadModel(`${dir}/run/checkpoint`);
    const logits = noGrad(() =>
      tidy(() => back.forward(Tensor.from([1, 2, 3], [1, 3], { dtype: "i32" })))
    );
    assert((await logits.toArray()).every(Number.isFinite), "the checkpoint is finite");
    back.dispose();
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "a checkpoint saved by the trainer loads back with identical logits",
  ...gpuTest,
  fn: async () => {
    const dir = await tinyModelWithTokenizer();
    const model = await loadModel(dir, { trainable: true });
    await train(model, new DemoSource(9), { ...quick, steps: 2, outDir: `${dir}/run` }, {
      log: () => {},
    });
    const ids = Tensor.from([3, 1, 4, 1, 5, 9, 2, 6], [2, 4], { dtype: "i32" });
    const a = noGrad(() => tidy(() => model.forward(ids)));
    const back = await loadModel(`${dir}/run/checkpoint`);
    const b = noGrad(() => tidy(() => back.forward(ids)));
    assertEquals([...(await b.toArray())], [...(await a.toArray())]);
    model.dispose();
    back.dispose();
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "--recompute gives the same loss and gradients bit for bit, with a lower activation peak",
  ...gpuTest,
  fn: async () => {
    const { prompts, responses } = await fixturePromptsAndResponses("qwen3-tiny");
    const batch = scoredBatch(packSequences(prompts, responses, 0));
    const run = async (recompute: boolean) => {
      const model = await loadModel(`${HF}qwen3-tiny`, { trainable: true });
      device().resetPeak();
      const before = device().liveBytes;
      const objective = emFtObjective({ nSamples: 1, reduce: "mean" });
      const acc = accumulateGradients(model, batch, objective, 2, undefined, recompute);
      const peak = device().peakLiveBytes - before;
      const loss = await acc.loss.item();
      const grads = await Promise.all(
        model.tensors().map(async (t) => Array.from(await t.grad!.toArray())),
      );
      [acc.loss, ...Object.values(acc.stats)].forEach((t) => t.dispose());
      model.dispose();
      return { loss, grads, peak };
    };
    const plain = await run(false);
    const recomputed = await run(true);
    assertEquals(recomputed.loss, plain.loss);
    plain.grads.forEach((g, i) => assertEquals(recomputed.grads[i], g, `gradient ${i}`));
    assert(
      recomputed.peak < plain.peak,
      `activation peak ${recomputed.peak} bytes with --recompute, ${plain.peak} without`,
    );
  },
});
