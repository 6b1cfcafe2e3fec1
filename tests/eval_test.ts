import { loadModel } from "../engine/model/checkpoint.ts";
import { Rng } from "../engine/random.ts";
import { Tensor } from "../engine/tensor.ts";
import { adaptiveTemperature, adaptiveTemperatureReference } from "../infer/baselines.ts";
import { emInfProcessor } from "../infer/em_inf.ts";
import { evaluate, summaryTable } from "../infer/eval.ts";
import { generate } from "../infer/generate.ts";
import { readProblems } from "../infer/eval_cli.ts";
import { heldOutProblems } from "../demo/task.ts";
import { runCli } from "./_cli.ts";
import { assert, assertEquals, assertRejects } from "@std/assert";
import { assertClose, gpuTest, tinyModelWithTokenizer } from "./_helpers.ts";

const HF = new URL("./fixtures/hf/", import.meta.url).pathname;

Deno.test({
  name: "adaptiveTemperature() on the GPU finds the reference's tau and divides the logits by it",
  ...gpuTest,
  fn: async () => {
    const rng = new Rng(2);
    const V = 1500;
    const rows = [0.2, 1, 4, 12].map((k) =>
      Array.from({ length: V }, () => Math.fround(k * rng.normal()))
    );
    for (const opts of [{ alpha: 0.5, delta: 0.1 }, { alpha: 0.4, delta: 0.5 }]) {
      const r = adaptiveTemperature(Tensor.from(rows.flat(), [4, V]), opts);
      const tau = Array.from(await r.tau.toArray());
      assertClose(tau, rows.map((row) => adaptiveTemperatureReference(row, opts)), {
        atol: 1e-5,
        rtol: 0,
      }, "tau");
      const out = await r.logits.toArray();
      assertClose(Array.from(out.slice(0, V)), rows[0].map((z) => z / tau[0]), {
        atol: 1e-3,
        rtol: 1e-5,
      }, "z / tau");
    }
  },
});

Deno.test({
  name:
    "generation with the EM-INF processor keeps greedy decoding unchanged and lowers sampled entropy",
  ...gpuTest,
  fn: async () => {
    const model = await loadModel(`${HF}qwen2-tiny`);
    const prompts = [[37, 235, 396, 72, 255], [508, 390, 281]];
    const plain = await generate(model, prompts, { greedy: true, maxNewTokens: 6 });
    const adjusted = await generate(model, prompts, {
      greedy: true,
      maxNewTokens: 6,
      logitsProcessor: emInfProcessor(),
    });
    assertEquals(adjusted.tokens, plain.tokens);
    const a = await generate(model, prompts, { maxNewTokens: 6, seed: 1, returnEntropies: true });
    const b = await generate(model, prompts, {
      maxNewTokens: 6,
      seed: 1,
      returnEntropies: true,
      logitsProcessor: emInfProcessor(),
    });
    const mean = (r: typeof a) =>
      r.entropies!.flat().reduce((s, x) => s + x, 0) / r.entropies!.flat().length;
    assert(mean(b) < mean(a), `entropy with EM-INF ${mean(b)} < without ${mean(a)}`);
    model.dispose();
  },
});

Deno.test({
  name: "evaluate() runs every method, scores answers, writes per-problem JSONL and a table",
  ...gpuTest,
  fn: async () => {
    const dir = await tinyModelWithTokenizer();
    const model = await loadModel(dir);
    const problems = [{ problem: "12+34=", answer: "46" }, { problem: "5*6=", answer: "30" }, {
      problem: "99-9=",
      answer: "90",
    }];
    const out = `${dir}/results.jsonl`;
    const rows = await evaluate(model, problems, {
      methods: ["greedy", "sample", "em-inf", "adaptive-temp", "self-consistency"],
      temperature: 1,
      topP: 1,
      k: 3,
      maxNewTokens: 3,
      batchSize: 4,
      seed: 0,
      chat: false,
      format: "raw",
      emInf: {},
      adaptive: {},
      outFile: out,
      log: () => {},
    });
    assertEquals(rows.map((r) => r.method), [
      "greedy",
      "sample",
      "em-inf",
      "adaptive-temp",
      "self-consistency",
    ]);
    for (const r of rows) {
      assert(
        r.accuracy >= 0 && r.accuracy <= 1 && r.tokens > 0 && r.seconds > 0,
        JSON.stringify(r),
      );
    }
    assertEquals(rows[4].sequences, 3);
    // the mean entropy of the generated tokens' distributions: ln(vocab) bounds it; EM-INF lowers
    // it below plain sampling's on the same prompts and seeds
    const [, sample, emInf] = rows;
    for (const r of rows) {
      assert(r.entropy > 0 && r.entropy <= Math.log(model.config.vocabSize) + 1e-6, `${r.entropy}`);
    }
    assert(emInf.entropy < sample.entropy, `EM-INF ${emInf.entropy}, sampling ${sample.entropy}`);
    const lines = (await Deno.readTextFile(out)).trim().split("\n").map((l) => JSON.parse(l));
    assertEquals(lines.length, 15);
    assertEquals(lines.filter((l) => l.method === "self-consistency")[0].responses.length, 3);
    const table = summaryTable(rows, 3);
    assert(table.includes("self-consistency (maj@3)") && table.includes("cost vs sampling"), table);
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("readProblems() names the file and line of a bad record", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/p.jsonl`, '{"problem": "1+1", "answer": 2}\n{"problem": "x"}\n');
  await assertRejects(() => readProblems(`${dir}/p.jsonl`), Error, `${dir}/p.jsonl:2: "answer"`);
  await assertRejects(() => readProblems(`${dir}/none.jsonl`), Error, "cannot read");
  await Deno.remove(dir, { recursive: true });
});

Deno.test({
  name:
    "refine on the demo model: every round decodes again, and its rounds and tokens are in the cost",
  ...gpuTest,
  fn: async () => {
    const model = await loadModel(new URL("../demo/model", import.meta.url).pathname);
    const problems = heldOutProblems(20).map((p) => ({ problem: p.prompt, answer: p.answer }));
    const dir = await Deno.makeTempDir({ prefix: "refine_" });
    const rows = await evaluate(model, problems, {
      methods: ["sample", "refine"],
      temperature: 1,
      topP: 1,
      k: 4,
      refineRounds: 2,
      maxNewTokens: 5,
      batchSize: 64,
      seed: 0,
      chat: false,
      format: "raw",
      emInf: {},
      adaptive: {},
      outFile: `${dir}/out.jsonl`,
      log: () => {},
    });
    const [sample, refine] = rows;
    assertEquals(refine.sequences, 3, "the first answer and two refinement rounds");
    // each round decodes every problem again: about three times the tokens of one sample
    assert(refine.tokens > 2.5 * sample.tokens, `${refine.tokens} vs ${sample.tokens}`);
    const line = (await Deno.readTextFile(`${dir}/out.jsonl`)).trim().split("\n").map((l) =>
      JSON.parse(l)
    )
      .find((l) => l.method === "refine");
    assertEquals(line.rounds[0].length, 3, "every round's response is kept");
    assertEquals(line.responses[0], line.rounds[0][2], "the last round's answer counts");
    const table = summaryTable(rows, 4, 2);
    assert(table.includes("| refine (2 rounds) |"), table);
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("eval --score scores saved responses of each task with no model", async () => {
  const dir = await Deno.makeTempDir({ prefix: "score_" });
  const write = async (name: string, lines: unknown[]) => {
    await Deno.writeTextFile(`${dir}/${name}`, lines.map((l) => JSON.stringify(l)).join("\n"));
    return `${dir}/${name}`;
  };
  const math = await write("math.jsonl", [
    { problem: "1+1", answer: "2", response: "it is \\boxed{2}" },
    { problem: "2+2", answer: "4", response: "\\boxed{5}" },
    { problem: "3+3", answer: "6", responses: ["\\boxed{6}", "\\boxed{7}", "\\boxed{6}"] },
  ]);
  const m = await runCli("../infer/eval_cli.ts", ["--score", math]);
  assertEquals(m.code, 0, m.stderr);
  // pass@1: (1 + 0 + 2/3) / 3; majority vote: 1, 0, 1
  assert(m.stdout.includes("| 3 | 5 | 55.6% | 66.7% |"), m.stdout);
  const science = await write("science.jsonl", [
    { problem: "speed?", answer: "32 km/s", response: "The answer is 3.2e4 m/s." },
    { problem: "mass?", answer: "5 kg", response: "\\boxed{5.2\\,\\mathrm{kg}}" },
    { problem: "which?", answer: "B", choices: ["1 J", "2 J"], response: "So (B)." },
  ]);
  const s = await runCli("../infer/eval_cli.ts", ["--task", "science", "--score", science]);
  assertEquals(s.code, 0, s.stderr);
  assert(s.stdout.includes("| 3 | 3 | 66.7% |"), s.stdout);
  const loose = await runCli("../infer/eval_cli.ts", [
    "--task",
    "science",
    "--rtol",
    "0.05",
    "--score",
    science,
  ]);
  assert(loose.stdout.includes("| 3 | 3 | 100.0% |"), loose.stdout);
  const bad = await write("bad.jsonl", [{ problem: "x", answer: "1" }]);
  const b = await runCli("../infer/eval_cli.ts", ["--score", bad]);
  assertEquals(b.code, 1);
  assert(b.stderr.includes(`${bad}:1: "response" (a string) or "responses"`), b.stderr);
  await Deno.remove(dir, { recursive: true });
});
