import { loadModel } from "../engine/model/checkpoint.ts";
import { readSafetensors, toInt32 } from "../engine/safetensors.ts";
import { noGrad, tidy } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { concat } from "../engine/ops/mod.ts";
import { generate } from "../infer/generate.ts";
import { sampleReference, sampleTokens, sampleTokensPerRow } from "../infer/sampling.ts";
import { Rng } from "../engine/random.ts";
import { assert, assertEquals } from "@std/assert";
import { assertClose, gpuTest } from "./_helpers.ts";

const HF = new URL("./fixtures/hf/", import.meta.url).pathname;

for (const name of ["qwen2-tiny", "qwen3-tiny"]) {
  Deno.test({
    name: `${name}: greedy generation with the KV cache reproduces transformers' greedy_ids`,
    ...gpuTest,
    fn: async () => {
      const model = await loadModel(`${HF}${name}`);
      const { tensors } = await readSafetensors(`${HF}${name}/expected.safetensors`);
      const want = [...toInt32(tensors.get("greedy_ids")!)];
      const r = await generate(model, [want.slice(0, 5)], { greedy: true, maxNewTokens: 16 });
      assertEquals(r.tokens[0], want.slice(5));
      model.dispose();
    },
  });
}

Deno.test({
  name: "cached decoding gives the same logits as a full forward pass",
  ...gpuTest,
  fn: async () => {
    const model = await loadModel(`${HF}qwen3-tiny`);
    const ids = [[7, 99, 3, 250, 11, 400, 8], [0, 0, 5, 6, 77, 301, 2]];
    const mask = [1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1];
    const full = noGrad(() =>
      tidy(() =>
        model.forward(Tensor.from(ids.flat(), [2, 7], { dtype: "i32" }), { attentionMask: mask })
      )
    );
    const cache = model.createCache(2, 7);
    const parts: Tensor[] = [];
    // prompt of 4, then one token at a time
    const cols = (a: number, b: number) => ids.flatMap((r) => r.slice(a, b));
    const maskTo = (s: number) => [0, 1].flatMap((b) => mask.slice(b * 7, b * 7 + s));
    noGrad(() => {
      parts.push(
        model.forward(Tensor.from(cols(0, 4), [2, 4], { dtype: "i32" }), {
          attentionMask: maskTo(4),
          cache,
        }),
      );
      for (let t = 4; t < 7; t++) {
        parts.push(
          model.forward(Tensor.from(cols(t, t + 1), [2, 1], { dtype: "i32" }), {
            attentionMask: maskTo(t + 1),
            cache,
          }),
        );
      }
    });
    const inc = noGrad(() => concat(parts, 1));
    const a = await full.toArray();
    const b = await inc.toArray();
    const V = model.config.vocabSize;
    const real = (x: ArrayLike<number>) =>
      Array.from(x).filter((_, i) => mask[Math.floor(i / V)] === 1);
    assertClose(real(b), real(a), { atol: 2e-5, rtol: 0 }, "cached vs uncached logits");
    cache.dispose();
    model.dispose();
  },
});

Deno.test({
  name:
    "a long prompt prefilled in passes through the cache gives the tokens and entropies of one pass",
  ...gpuTest,
  fn: async () => {
    const model = await loadModel(`${HF}qwen2-tiny`);
    // left padding inside the first pass, a pass boundary mid-prompt, a last pass of one token
    const prompts = [[37, 235, 396, 72, 255, 9, 14], [508, 390], [1, 2, 3, 4, 5, 6, 7]];
    const options = { temperature: 1, maxNewTokens: 8, seed: 5, returnEntropies: true };
    const streamed: number[][] = prompts.map(() => []);
    const whole = await generate(model, prompts, {
      ...options,
      onStep: (ids, _step, h) => ids.forEach((id, b) => id >= 0 && streamed[b].push(h![b])),
    });
    // each step's entropies come with its ids, as the result has them
    assertEquals(streamed, whole.entropies);
    for (const prefillChunk of [2, 3]) {
      const passes = await generate(model, prompts, { ...options, prefillChunk });
      assertEquals(passes.tokens, whole.tokens, `prefillChunk ${prefillChunk}`);
      assertClose(passes.entropies!.flat(), whole.entropies!.flat(), { atol: 1e-4 });
    }
    model.dispose();
  },
});

Deno.test({
  name:
    "a padded batch gives each row the same tokens as that row alone (greedy and seeded sampling)",
  ...gpuTest,
  fn: async () => {
    const model = await loadModel(`${HF}qwen2-tiny`);
    const prompts = [[37, 235, 396, 72, 255], [508, 390], [1, 2, 3, 4, 5, 6, 7]];
    const batch = await generate(model, prompts, { greedy: true, maxNewTokens: 8 });
    for (let b = 0; b < prompts.length; b++) {
      const alone = await generate(model, [prompts[b]], { greedy: true, maxNewTokens: 8 });
      assertEquals(batch.tokens[b], alone.tokens[0], `row ${b}`);
    }
    const s1 = await generate(model, prompts, {
      temperature: 1,
      topP: 0.9,
      maxNewTokens: 8,
      seed: 3,
    });
    const s2 = await generate(model, prompts, {
      temperature: 1,
      topP: 0.9,
      maxNewTokens: 8,
      seed: 3,
    });
    assertEquals(s1.tokens, s2.tokens, "same seed, same samples");
    model.dispose();
  },
});

Deno.test({
  name: "generation stops each row at an eos id and reports it finished",
  ...gpuTest,
  fn: async () => {
    const model = await loadModel(`${HF}qwen2-tiny`);
    const { tensors } = await readSafetensors(`${HF}qwen2-tiny/expected.safetensors`);
    const greedy = [...toInt32(tensors.get("greedy_ids")!)];
    // greedy continues 156, 156, 485...: make 485 the eos
    const r = await generate(model, [greedy.slice(0, 5), [3, 4]], {
      greedy: true,
      maxNewTokens: 10,
      eosTokenIds: [485],
    });
    assertEquals(r.tokens[0], [156, 156, 485]);
    assertEquals(r.finished[0], true);
    model.dispose();
  },
});

Deno.test({
  name:
    "sampleTokens() on the GPU picks what the CPU reference picks (greedy, temperature, top-k, top-p)",
  ...gpuTest,
  fn: async () => {
    const rng = new Rng(11);
    const V = 1000;
    const rows = 6;
    const z = Array.from({ length: rows * V }, () => Math.fround(3 * rng.normal()));
    const logits = Tensor.from(z, [rows, V]);
    const settings = [
      { greedy: true },
      { temperature: 1 },
      { temperature: 0.5, topK: 20 },
      { temperature: 1.3, topP: 0.8 },
      { temperature: 0.7, topK: 50, topP: 0.9 },
      { topK: 1 },
    ];
    for (const s of settings) {
      for (let trial = 0; trial < 4; trial++) {
        const u = Array.from({ length: rows }, () => rng.next());
        const ids = sampleTokens(logits, s, u);
        const got = Array.from(await ids.toArray());
        const want = u.map((ui, r) => sampleReference(z.slice(r * V, (r + 1) * V), s, ui));
        assertEquals(got, want, JSON.stringify(s));
        ids.dispose();
      }
    }
    // an empirical check: frequencies follow softmax at temperature 1
    const small = Tensor.from([0, 1, 2, -1], [1, 4]);
    const counts = [0, 0, 0, 0];
    const N = 400;
    for (let i = 0; i < N; i++) {
      const id = sampleTokens(small, {}, [(i + 0.5) / N]);
      counts[(await id.toArray())[0]]++;
      id.dispose();
    }
    const p = [0, 1, 2, -1].map(Math.exp);
    const total = p.reduce((a, b) => a + b);
    assertClose(counts.map((c) => c / N), p.map((x) => x / total), { atol: 0.01 }, "frequencies");
  },
});

Deno.test({
  name:
    "sampleTokensPerRow(): each row's own settings pick what the CPU reference picks, long rows and short",
  ...gpuTest,
  fn: async () => {
    const rng = new Rng(12);
    const settings = [
      { greedy: true },
      { temperature: 1 },
      { temperature: 0.5, topK: 20 },
      { temperature: 1.3, topP: 0.8 },
      { temperature: 0.7, topK: 3, topP: 0.9 },
      { topK: 1 },
    ];
    for (const V of [1000, 15]) { // 128 threads a row, and the small workgroup of short rows
      const rows = settings.length;
      const z = Array.from({ length: rows * V }, () => Math.fround(3 * rng.normal()));
      const logits = Tensor.from(z, [rows, V]);
      for (let trial = 0; trial < 4; trial++) {
        const u = Array.from({ length: rows }, () => rng.next());
        const ids = sampleTokensPerRow(logits, settings, u);
        const want = u.map((ui, r) =>
          sampleReference(z.slice(r * V, (r + 1) * V), settings[r], ui)
        );
        assertEquals(Array.from(await ids.toArray()), want, `V ${V} trial ${trial}`);
        ids.dispose();
      }
      logits.dispose();
    }
  },
});

const RUNS = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/generate_runs.json", import.meta.url)),
);

Deno.test({
  name:
    "generate() gives the tokens of the stored run for the same seed (run-ahead decoding changes nothing)",
  ...gpuTest,
  fn: async () => {
    const { emInfProcessor } = await import("../infer/em_inf.ts");
    const demo = await loadModel(new URL("../demo/model", import.meta.url).pathname);
    const qwen = await loadModel(`${HF}qwen2-tiny`);
    for (
      const [name, model] of [["demo_sample", demo], ["demo_em_inf", demo], [
        "qwen2_sample",
        qwen,
      ]] as const
    ) {
      const run = RUNS[name];
      const r = await generate(model, run.prompts, {
        ...run.options,
        logitsProcessor: run.options.emInf ? emInfProcessor() : undefined,
        returnEntropies: run.entropies !== undefined,
      });
      assertEquals(r.tokens, run.tokens, name);
      assertEquals(r.finished, run.finished, name);
      if (run.entropies) {
        // the fused attention (issue 12) sums in another order than the stored run's
        // composed one: tokens stay exact, entropies agree to float32 rounding
        assertClose(r.entropies!.flat(), run.entropies.flat(), { atol: 1e-6, rtol: 1e-5 }, name);
      }
    }
    demo.dispose();
    qwen.dispose();
  },
});

Deno.test({
  name:
    "run-ahead decoding equals one readback per token: rows ending at different steps, at the first step, at maxNewTokens",
  ...gpuTest,
  fn: async () => {
    const model = await loadModel(`${HF}qwen2-tiny`);
    const prompts = [[5, 9, 200, 31], [7, 8], [300, 301, 302, 303, 304, 305], [1], [42, 43]];
    const options = { temperature: 1, seed: 5, maxNewTokens: 23, returnEntropies: true };
    const free = await generate(model, prompts, { ...options, eosTokenIds: [] });
    // eos ids chosen from that run: row 0 ends at its first token, row 2 at its 7th,
    // row 4 at its 15th; rows 1 and 3 run to maxNewTokens (unless they meet one earlier)
    const eos = [free.tokens[0][0], free.tokens[2][6], free.tokens[4][14]];
    const steps: number[] = [];
    const perToken = await generate(model, prompts, { ...options, eosTokenIds: eos, readEvery: 1 });
    const ahead = await generate(model, prompts, {
      ...options,
      eosTokenIds: eos,
      onStep: (_ids, step) => void steps.push(step),
    });
    assertEquals(ahead.tokens, perToken.tokens);
    assertEquals(ahead.finished, perToken.finished);
    assertEquals(ahead.steps, perToken.steps);
    assertEquals(ahead.entropies, perToken.entropies);
    assertEquals(
      steps,
      Array.from({ length: ahead.steps }, (_, i) => i),
      "onStep once per step, in order",
    );
    assertEquals(ahead.tokens[0].length, 1, "row 0 finished at the first step");
    assert(ahead.tokens.some((t) => t.length === 23), "a row reached maxNewTokens");
    model.dispose();
  },
});

Deno.test({
  name:
    "generate() leaves no GPU memory behind: batch 1 (the fused GEMV path) and batch 5, twice each",
  ...gpuTest,
  fn: async () => {
    const { device } = await import("../engine/device.ts");
    const demo = await loadModel(new URL("../demo/model", import.meta.url).pathname);
    const options = { greedy: true, maxNewTokens: 12, eosTokenIds: [] };
    await generate(demo, [[1, 2, 3]], options); // pipelines compiled, pool warm
    const live = device().liveBytes;
    for (const batch of [1, 5, 1, 5]) {
      await generate(demo, Array.from({ length: batch }, (_, b) => [1 + b, 2, 3]), options);
      assertEquals(device().liveBytes, live, `live bytes after a batch-${batch} run`);
    }
    demo.dispose();
  },
});
