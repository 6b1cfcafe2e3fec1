import { loadModel } from "../engine/model/checkpoint.ts";
import { Rng } from "../engine/random.ts";
import { Tensor } from "../engine/tensor.ts";
import { adaptiveTemperature, adaptiveTemperatureReference } from "../infer/baselines.ts";
import { emInfProcessor } from "../infer/em_inf.ts";
import { evaluate, summaryTable } from "../infer/eval.ts";
import { generate } from "../infer/generate.ts";
import { readProblems } from "../infer/eval_cli.ts";
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
