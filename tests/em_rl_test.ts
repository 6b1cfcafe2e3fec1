/**
 * EM-RL: rewards, advantages, the PPO-clip loss and k3 KL against float64
 * references, the whole loss's gradient through the fixture model, and the
 * trainer's EM-RL path (PPO epochs, reward going up, no reference at kl 0,
 * the memory report; resume is in run_state_test.ts).
 */
import { device } from "../engine/device.ts";
import { loadModel } from "../engine/model/checkpoint.ts";
import { mul, sum } from "../engine/ops/mod.ts";
import { toFloat32 } from "../engine/safetensors.ts";
import { noGrad, tidy } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { DEMO_HELD_OUT, heldOutProblems } from "../demo/task.ts";
import { DemoSource } from "../demo/source.ts";
import { ShuffledSource } from "../train/data.ts";
import { advantages } from "../train/estimators.ts";
import {
  emRlObjective,
  klK3,
  klK3Reference,
  ppoClipLoss,
  ppoClipReference,
} from "../train/em_rl.ts";
import { scorePositions } from "../train/scoring.ts";
import { packSequences, scoredBatch, type StepBatch } from "../train/objective.ts";
import { answerOf, REWARDS, type Rollout } from "../train/rewards.ts";
import { majorityVote } from "../infer/answer.ts";
import { sftObjective } from "../train/sft.ts";
import { accumulateGradients } from "../train/accumulate.ts";
import { emFtObjective } from "../train/em_ft.ts";
import { Rng } from "../engine/random.ts";
import { train } from "../train/trainer.ts";
import type { TrainOptions } from "../train/options.ts";
import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import {
  assertClose,
  fixturePromptsAndResponses,
  gpuTest,
  tinyModelWithTokenizer,
} from "./_helpers.ts";

const HF = new URL("./fixtures/hf/", import.meta.url).pathname;
const DEMO = new URL("../demo/model", import.meta.url).pathname;

function rollout(over: Partial<Rollout>): Rollout {
  return { text: "", origin: "test", entropies: [], logProbs: [], ...over };
}

Deno.test("rewards on hand-computed rollouts: token, sequence, self-certainty, majority, correct", () => {
  const r = rollout({
    text: "so it is 805",
    gold: "805",
    entropies: [0.5, 0.25, 0.75],
    logProbs: [-0.1, -0.2, -0.6],
    selfCertainty: [1, 2, 3],
  });
  assertAlmostEquals(REWARDS.token.reward(r, [r], "mean"), -0.5, 1e-12);
  assertAlmostEquals(REWARDS.token.reward(r, [r], "sum"), -1.5, 1e-12);
  assertAlmostEquals(REWARDS.sequence.reward(r, [r], "mean"), -0.3, 1e-12);
  assertAlmostEquals(REWARDS.sequence.reward(r, [r], "sum"), -0.9, 1e-12);
  assertAlmostEquals(REWARDS["self-certainty"].reward(r, [r], "mean"), 2, 1e-12);
  assertEquals(REWARDS.correct.reward(r, [r], "mean"), 1);
  assertEquals(
    REWARDS.correct.reward(rollout({ text: "\\boxed{806}", gold: "805" }), [], "mean"),
    0,
  );
  assertEquals(
    REWARDS.correct.reward(rollout({ text: "\\boxed{\\frac{1}{2}}", gold: "0.5" }), [], "mean"),
    1,
  );
  assertThrows(
    () => REWARDS.correct.reward(rollout({ text: "1", origin: "d.jsonl:3" }), [], "mean"),
    Error,
    "d.jsonl:3 has none",
  );
  const group = ["805", "806", "805", "no answer"].map((text) => rollout({ text }));
  assertEquals(majorityVote(group.map((g) => answerOf(g.text))), "805");
  assertEquals(group.map((g) => REWARDS.majority.reward(g, group, "mean")), [1, 0, 1, 0]);
  // a tie goes to the answer seen first, as self-consistency's vote breaks it
  const tie = ["1", "2", "2", "1"].map((text) => rollout({ text }));
  assertEquals(majorityVote(tie.map((g) => answerOf(g.text))), "1");
  assertEquals(tie.map((g) => REWARDS.majority.reward(g, tie, "mean")), [1, 0, 0, 1]);
});

Deno.test("advantages: RLOO, GRPO and REINFORCE on known rewards; RLOO refuses one rollout", () => {
  // two prompts, N = 2
  assertEquals(advantages([1, 0, 0, 1], 2, "rloo"), [1, -1, -1, 1]);
  // N = 4: r_i - mean of the other three
  assertClose(advantages([1, 0, 0, 0], 4, "rloo"), [1, -1 / 3, -1 / 3, -1 / 3], { atol: 1e-12 });
  // GRPO: (r - mean) / (unbiased std + 1e-6); std of [1, 0, 0, 0] = 0.5
  assertClose(
    advantages([1, 0, 0, 0], 4, "grpo"),
    [0.75, -0.25, -0.25, -0.25].map((x) => x / (0.5 + 1e-6)),
    {
      atol: 1e-9,
    },
  );
  // REINFORCE: r - the batch mean (over both prompts)
  assertClose(advantages([1, 0, 0, 3], 2, "reinforce"), [0, -1, -1, 2], { atol: 1e-12 });
  assertThrows(() => advantages([1, 2], 1, "rloo"), Error, "needs --n-samples >= 2");
  assertThrows(() => advantages([1, 2], 1, "grpo"), Error, "needs --n-samples >= 2");
  assertThrows(() => advantages([1], 1, "reinforce"), Error, "at least 2 rollouts per batch");
});

Deno.test({
  name:
    "ppoClipLoss() and its gradient match the float64 reference inside and outside the clip range",
  ...gpuTest,
  fn: async () => {
    const eps = 0.2;
    // ratio = e^(logp - old): 1, 1.1, 1.5, 0.6, 0.9, 1.3, 0.7, with advantages of both signs
    const ratios = [1, 1.1, 1.5, 0.6, 0.9, 1.3, 0.7, 1.5, 0.6];
    const adv = [0.5, 1, 1, 1, -1, -1, -1, -2, 2];
    const old = ratios.map((_, i) => -1 - 0.1 * i);
    const logp = ratios.map((r, i) => Math.fround(old[i] + Math.log(r)));
    const x = Tensor.from(logp, [logp.length], { requiresGrad: true });
    const [loss, clipped] = tidy(() => {
      const l = ppoClipLoss(x, Tensor.from(old), Tensor.from(adv), eps);
      sum(l.loss).backward();
      return [l.loss, l.clipped];
    });
    const want = logp.map((lp, i) => ppoClipReference(lp, Math.fround(old[i]), adv[i], eps));
    assertClose(await loss.toArray(), want.map((w) => w.loss), { atol: 1e-6, rtol: 1e-5 }, "loss");
    // the clip fraction counts the tokens whose clipped term is in force (2 of these 9)
    assertEquals(Array.from(await clipped.toArray()), want.map((w) => w.clipped), "clipped");
    assertEquals(want.reduce((n, w) => n + w.clipped, 0), 2);
    assertClose(
      await x.grad!.toArray(),
      want.map((w) => w.dLogp),
      { atol: 1e-6, rtol: 1e-5 },
      "grad",
    );
    // cases cover both: the clipped term in force (no gradient: ratio 1.5 with A > 0, 0.7 with
    // A < 0) and a ratio outside the range where the unclipped term is the pessimistic one
    assertEquals(want.map((w) => w.dLogp === 0), [
      false,
      false,
      true,
      false,
      false,
      false,
      true,
      false,
      false,
    ]);
  },
});

Deno.test({
  name: "klK3() values, clamping to [-10, 10] and gradient match the float64 reference",
  ...gpuTest,
  fn: async () => {
    const logp = [-1, -2, -0.5, -3, -9, -1];
    const ref = [-1, -1.5, -2, -1, -1, -20];
    const x = Tensor.from(logp, [logp.length], { requiresGrad: true });
    const kl = tidy(() => {
      const k = klK3(x, Tensor.from(ref));
      sum(k).backward();
      return k;
    });
    const want = logp.map((lp, i) => klK3Reference(lp, ref[i]));
    assertEquals(want[0].kl, 0);
    assertEquals(want[4].kl, 10); // e^8 - 8 - 1 clamps
    assertClose(await kl.toArray(), want.map((w) => w.kl), { atol: 1e-5, rtol: 1e-5 }, "k3");
    assertClose(
      await x.grad!.toArray(),
      want.map((w) => w.dLogp),
      { atol: 1e-5, rtol: 1e-5 },
      "grad",
    );
  },
});

/** The fixture batch of qwen2-tiny as the trainer packs it. */
async function fixtureBatch(): Promise<
  { batch: StepBatch; entropy: Float32Array; logits: Float32Array }
> {
  const { prompts, responses, tensors } = await fixturePromptsAndResponses("qwen2-tiny");
  return {
    batch: scoredBatch(packSequences(prompts, responses, 0)),
    entropy: toFloat32(tensors.get("entropy")!),
    logits: toFloat32(tensors.get("logits")!),
  };
}

Deno.test({
  name: "the token reward from our no-grad pass equals the one from transformers' entropies",
  ...gpuTest,
  fn: async () => {
    const model = await loadModel(`${HF}qwen2-tiny`);
    const { batch, entropy } = await fixtureBatch();
    const scored = await scorePositions(model, batch, 2, false);
    // per row: -mean of the fixture's entropies at the scored positions
    for (const row of [0, 1]) {
      const idx = batch.positions.map((p, i) => [p, i]).filter(([p]) => Math.floor(p / 12) === row);
      const ours = REWARDS.token.reward(
        rollout({ entropies: idx.map(([, i]) => scored.entropies[i]) }),
        [],
        "mean",
      );
      const theirs = -idx.reduce((s, [p]) => s + entropy[p], 0) / idx.length;
      assertAlmostEquals(ours, theirs, 1e-5);
    }
    model.dispose();
  },
});

Deno.test({
  name:
    "the EM-RL loss's gradient through the fixture model equals the float64 composition of its pieces",
  ...gpuTest,
  fn: async () => {
    const eps = 0.2;
    const klCoef = 0.3; // large, so the KL term matters in the comparison
    const { batch } = await fixtureBatch();
    const policy = await loadModel(`${HF}qwen2-tiny`, { trainable: true });
    const n = batch.positions.length;
    const scored = await scorePositions(policy, batch, 2, false);
    // old log-probs moved so that ratios fall inside and outside [1-eps, 1+eps]; advantages per row
    const shifts = [0, 0.1, -0.3, 0.5, -0.05, 0.25, -0.4, 0.02, 0.3, -0.2, 0.15, -0.6, 0.4, 0.05];
    const old = Array.from(scored.logProbs, (lp, i) => Math.fround(lp + shifts[i % shifts.length]));
    const ref = Array.from(scored.logProbs, (lp, i) => Math.fround(lp - 0.3 + 0.07 * (i % 5)));
    const rowAdv = [0.8, -1.3];
    const adv = batch.positions.map((p) => rowAdv[Math.floor(p / batch.length)]);
    batch.data = { old, ref, adv };
    const objective = emRlObjective({
      nSamples: 2,
      reward: "token",
      rewardReduce: "mean",
      estimator: "rloo",
      clipRatio: eps,
      ppoEpochs: 1,
      ppoMiniBatch: 0,
      klCoef,
    }, policy); // the reference is unused: makeBatch is not called
    const acc = accumulateGradients(policy, batch, objective, 1);
    await acc.loss.item();
    // float64: dL/dz at each scored position = dL/dlogp * (onehot(target) - softmax(z)) / n
    const [B, T] = [batch.rows, batch.length];
    const logits = await noGrad(() =>
      tidy(() =>
        policy.forward(Tensor.from(batch.ids, [B, T], { dtype: "i32" }), {
          attentionMask: batch.mask,
        })
      )
    ).toArray();
    const V = logits.length / (B * T);
    const G = new Float64Array(B * T * V);
    let loss = 0;
    batch.positions.forEach((p, i) => {
      const z = Array.from(logits.slice(p * V, (p + 1) * V));
      const m = Math.max(...z);
      const lse = m + Math.log(z.reduce((s, x) => s + Math.exp(x - m), 0));
      const lp = z[batch.targets[i]] - lse;
      const pg = ppoClipReference(lp, old[i], adv[i], eps);
      const k = klK3Reference(lp, ref[i]);
      loss += (pg.loss + klCoef * k.kl) / n;
      const d = (pg.dLogp + klCoef * k.dLogp) / n;
      z.forEach((x, j) =>
        G[p * V + j] = d * ((j === batch.targets[i] ? 1 : 0) - Math.exp(x - lse))
      );
    });
    assertAlmostEquals(await acc.loss.item(), loss, 1e-5);
    const trainerGrads = await Promise.all(
      policy.tensors().map(async (t) => Array.from(await t.grad!.toArray())),
    );
    // the same model's gradient of sum(G * logits): the chain rule through every layer
    const check = await loadModel(`${HF}qwen2-tiny`, { trainable: true });
    tidy(() => {
      const z = check.forward(Tensor.from(batch.ids, [B, T], { dtype: "i32" }), {
        attentionMask: batch.mask,
      });
      sum(mul(z, Tensor.from(G, [B, T, V]))).backward();
    });
    for (const [k, t] of check.tensors().entries()) {
      const want = Array.from(await t.grad!.toArray());
      const norm = Math.sqrt(want.reduce((s, x) => s + x * x, 0));
      const diff = Math.sqrt(want.reduce((s, x, i) => s + (x - trainerGrads[k][i]) ** 2, 0));
      assert(
        diff <= 1e-3 * norm + 1e-9,
        `${check.parameters[k]?.name ?? k}: ${diff} > 1e-3 x ${norm}`,
      );
    }
    [acc.loss, ...Object.values(acc.stats)].forEach((t) => t.dispose());
    policy.dispose();
    check.dispose();
  },
});

Deno.test({
  name:
    "at temperature 0.7, EM-RL's log-probs and entropies and EM-FT's loss are of softmax(z / 0.7), the sampled distribution",
  ...gpuTest,
  fn: async () => {
    const T = 0.7;
    const model = await loadModel(`${HF}qwen2-tiny`, { trainable: true });
    const { batch, logits } = await fixtureBatch();
    const V = logits.length / (batch.rows * batch.length);
    // float64 reference from transformers' logits: log softmax(z / T) at the target, H(softmax(z / T))
    const ref = batch.positions.map((p, i) => {
      const z = Array.from(logits.subarray(p * V, (p + 1) * V), (x) => x / T);
      const m = Math.max(...z);
      const lse = m + Math.log(z.reduce((a, x) => a + Math.exp(x - m), 0));
      const h = -z.reduce((a, x) => a + Math.exp(x - lse) * (x - lse), 0);
      return { logp: z[batch.targets[i]] - lse, h };
    });
    for (const temperature of [T, 1]) {
      batch.temperature = temperature;
      const scored = await scorePositions(model, batch, 2, false);
      const close = (a: ArrayLike<number>, b: number[]) =>
        a.length === b.length && b.every((x, i) => Math.abs(a[i] - x) < 2e-4);
      const mean = ref.reduce((a, r) => a + r.h, 0) / ref.length;
      const acc = accumulateGradients(
        model,
        batch,
        emFtObjective({ nSamples: 2, reduce: "mean" }),
        2,
      );
      const loss = await acc.loss.item();
      model.tensors().forEach((t) => (t.grad?.dispose(), t.grad = null));
      if (temperature === T) {
        assertClose(
          scored.logProbs,
          ref.map((r) => r.logp),
          { atol: 2e-5, rtol: 1e-4 },
          "log-probs",
        );
        assertClose(scored.entropies, ref.map((r) => r.h), { atol: 2e-5, rtol: 1e-4 }, "entropies");
        assertAlmostEquals(loss, mean, 1e-5, "EM-FT loss");
      } else {
        // the reference really depends on T: at T = 1 none of it holds
        assert(!close(scored.logProbs, ref.map((r) => r.logp)), "T = 1 log-probs differ");
        assert(Math.abs(loss - mean) > 1e-3, "T = 1 loss differs");
      }
    }
    // the objectives record the temperature their rollouts were sampled at
    const demo = await loadModel(DEMO, { trainable: true });
    const ctx = {
      model: demo,
      rng: new Rng(1),
      pad: 14,
      eos: [14],
      chat: false,
      maxNewTokens: 3,
      temperature: T,
      topP: 1,
      microBatch: 8,
    };
    const examples = new DemoSource(1).next(2);
    const ft = await emFtObjective({ nSamples: 2, reduce: "mean" }).makeBatch(ctx, examples);
    const rl = await emRlObjective({ ...quickRl, klCoef: 0 }, null).makeBatch(ctx, examples);
    assertEquals([ft.temperature, rl.temperature], [T, T]);
    model.dispose();
    demo.dispose();
  },
});

Deno.test({
  name: "the trainer's SFT path gives the cross-entropy of transformers' logits",
  ...gpuTest,
  fn: async () => {
    const { batch, logits } = await fixtureBatch();
    const model = await loadModel(`${HF}qwen2-tiny`, { trainable: true });
    const acc = accumulateGradients(model, batch, sftObjective(), 1);
    const V = 512;
    let want = 0;
    batch.positions.forEach((p, i) => {
      const z = Array.from(logits.slice(p * V, (p + 1) * V));
      const m = Math.max(...z);
      const lse = m + Math.log(z.reduce((s, x) => s + Math.exp(x - m), 0));
      want -= (z[batch.targets[i]] - lse) / batch.positions.length;
    });
    assertAlmostEquals(await acc.loss.item(), want, 1e-5);
    model.dispose();
  },
});

const quickRl = {
  nSamples: 2,
  reward: "token",
  rewardReduce: "mean",
  estimator: "rloo",
  clipRatio: 0.2,
  ppoEpochs: 1,
  ppoMiniBatch: 0,
  klCoef: 0.001,
} as const;

const quick: Partial<TrainOptions> = {
  method: "em-rl",
  steps: 1,
  batchSize: 4,
  nSamples: 2,
  microBatch: 8,
  maxNewTokens: 4,
  lr: 3e-3,
  seed: 11,
};

Deno.test({
  name: "EM-RL: the first PPO epoch has ratio 1; a second epoch moves it away from 1",
  ...gpuTest,
  fn: async () => {
    const dir = await tinyModelWithTokenizer("em_rl_");
    for (const ppoEpochs of [1, 2]) {
      const model = await loadModel(dir, { trainable: true });
      const r = await train(model, new DemoSource(2), {
        ...quick,
        ppoEpochs,
        outDir: `${dir}/e${ppoEpochs}`,
      }, {
        log: () => {},
      });
      const dev = r.history[0].ratioDeviation;
      if (ppoEpochs === 1) assertEquals(dev, 0, "old log-probs come from the same computation");
      else assert(dev > 1e-4, `mean |ratio - 1| over both epochs: ${dev}`);
      model.dispose();
    }
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "EM-RL: a short token-reward run on the demo model raises the mean reward",
  ...gpuTest,
  fn: async () => {
    // the same 16 held-out prompts every step, so the reward is comparable from step to step
    const problems = heldOutProblems(DEMO_HELD_OUT).slice(300, 316)
      .map((p) => ({ prompt: p.prompt, answer: p.answer }));
    const dir = await Deno.makeTempDir({ prefix: "em_rl_demo_" });
    const model = await loadModel(DEMO, { trainable: true });
    const r = await train(model, new ShuffledSource("fixed", problems, 1), {
      method: "em-rl",
      reward: "token",
      steps: 10,
      batchSize: 16,
      nSamples: 4,
      microBatch: 64,
      maxNewTokens: 5,
      lr: 1e-4,
      seed: 5,
      outDir: `${dir}/run`,
    }, { log: () => {} });
    const rewards = r.history.map((h) => h.reward);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    assert(
      mean(rewards.slice(-3)) > mean(rewards.slice(0, 3)) + 0.02,
      `mean reward by step: ${rewards.map((x) => x.toFixed(3))}`,
    );
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "EM-RL with --kl-coef 0 allocates no reference model (pool bytes)",
  ...gpuTest,
  fn: async () => {
    const dir = await tinyModelWithTokenizer("em_rl_kl_");
    const live: number[] = [];
    let bytes = 0;
    for (const klCoef of [0.001, 0]) {
      const model = await loadModel(dir, { trainable: true });
      bytes = model.tensors().reduce((s, t) => s + t.buffer.size, 0);
      await train(model, new DemoSource(2), { ...quick, klCoef, outDir: `${dir}/kl${klCoef}` }, {
        log: () => {},
        beforeStep: () => void live.push(device().liveBytes),
      });
      model.dispose();
    }
    assertEquals(live[0] - live[1], bytes, "the reference is exactly one copy of the weights");
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name:
    "repeated trainer steps (EM-FT, SFT, EM-RL) do not grow live GPU memory, and a run frees all",
  ...gpuTest,
  fn: async () => {
    const dir = await tinyModelWithTokenizer("em_rl_mem_");
    for (const method of ["em-ft", "sft", "em-rl"] as const) {
      const model = await loadModel(dir, { trainable: true });
      const start = device().liveBytes;
      const live: number[] = [];
      await train(model, new DemoSource(2), {
        ...quick,
        method,
        steps: 4,
        outDir: `${dir}/${method}`,
      }, {
        log: () => {},
        beforeStep: () => void live.push(device().liveBytes),
      });
      assertEquals(new Set(live).size, 1, `${method}: live bytes before each step ${live}`);
      assertEquals(device().liveBytes, start, `${method}: after the run`);
      model.dispose();
    }
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name:
    "--stop-on-collapse ends the run once the evaluation score falls below that fraction of its best",
  ...gpuTest,
  fn: async () => {
    const dir = await tinyModelWithTokenizer("em_rl_collapse_");
    const model = await loadModel(dir, { trainable: true });
    const scores = [0.8, 0.7, 0.3, 0.9];
    const lines: string[] = [];
    const r = await train(model, new DemoSource(2), {
      ...quick,
      steps: 4,
      evalEvery: 1,
      stopOnCollapse: 0.5,
      outDir: `${dir}/run`,
    }, {
      log: (l) => lines.push(l),
      evaluate: (_m, step) => Promise.resolve({ score: scores[step] }),
    });
    assertEquals(r.lastStep, 2, "stopped after the evaluation at step 2 (0.3 < 0.5 x 0.8)");
    assertEquals(r.best?.step, 0);
    assert(lines.some((l) => l.includes("fell below 0.5 of its best")), lines.join("\n"));
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name:
    "the trainer reports GPU memory by category (weights, optimizer, reference, rollouts, update) and RSS",
  ...gpuTest,
  fn: async () => {
    const dir = await tinyModelWithTokenizer("em_rl_memline_");
    const model = await loadModel(dir, { trainable: true });
    const weights = model.tensors().reduce((n, t) => n + t.buffer.size, 0);
    const lines: string[] = [];
    const r = await train(model, new DemoSource(2), { ...quick, steps: 2, outDir: `${dir}/run` }, {
      log: (l) => lines.push(l),
    });
    const m = r.history[0];
    assertEquals(m.weightBytes, weights);
    assertEquals(m.optimizerBytes, 2 * weights, "AdamW's m and v");
    assertEquals(m.referenceBytes, weights, "EM-RL's frozen reference");
    assert(m.rolloutPeakBytes > 0 && m.updatePeakBytes > m.gradientBytes, JSON.stringify(m));
    // RSS in bytes, of this process: within 2x of what the process reports now, and printed
    const rss = Deno.memoryUsage().rss;
    assert(m.rssBytes > rss / 2 && m.rssBytes < 2 * rss, `rssBytes ${m.rssBytes} vs rss ${rss}`);
    const memoryLines = lines.filter((l) => l.startsWith("memory @ step"));
    assertEquals(memoryLines.length, 2, "at step 1 and the end");
    assert(
      memoryLines[0].endsWith(`process RSS ${(m.rssBytes / 2 ** 20).toFixed(1)} MiB`),
      memoryLines[0],
    );
    assert(
      memoryLines[0].includes(`reference ${(weights / 2 ** 20).toFixed(1)} MiB`),
      memoryLines[0],
    );
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  },
});
