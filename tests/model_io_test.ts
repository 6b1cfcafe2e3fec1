/** Loading errors, config variants, the tokenizer fixtures and the generate CLI. */
import { ConfigError } from "../engine/model/config.ts";
import { parseQwenConfig } from "../engine/model/qwen.ts";
import { loadModel, saveModel } from "../engine/model/checkpoint.ts";
import { randomModel } from "../engine/model/init.ts";
import { randomNormal } from "../engine/ops/mod.ts";
import { readSafetensors, writeSafetensors } from "../engine/safetensors.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "@std/assert";
import { assertClose, gpuTest } from "./_helpers.ts";
import { Tensor } from "../engine/tensor.ts";
import { tidy } from "../engine/scope.ts";
import { tokenEntropyLoss } from "../train/em_ft.ts";

const HF = new URL("./fixtures/hf/", import.meta.url).pathname;
const TOK = new URL("./fixtures/qwen-tokenizer/", import.meta.url).pathname;

const base = JSON.parse(await Deno.readTextFile(`${HF}qwen2-tiny/config.json`));

Deno.test("parseQwenConfig() reads rope_theta at top level or in rope_parameters, and head_dim", () => {
  assertEquals(parseQwenConfig(base).ropeTheta, 10000);
  const old = { ...base, rope_parameters: undefined, rope_theta: 1e6 };
  assertEquals(parseQwenConfig(old).ropeTheta, 1e6);
  const q3 = JSON.parse(Deno.readTextFileSync(`${HF}qwen3-tiny/config.json`));
  const c = parseQwenConfig(q3);
  assertEquals([c.headDim, c.qkNorm, c.attentionBias, c.tieWordEmbeddings], [
    32,
    true,
    false,
    false,
  ]);
});

Deno.test("parseQwenConfig() refuses unsupported features naming the field", () => {
  const cases: [Record<string, unknown>, string][] = [
    [
      { ...base, rope_parameters: { rope_type: "yarn", rope_theta: 1e4, factor: 4 } },
      "rope_parameters.rope_type",
    ],
    [
      { ...base, rope_parameters: undefined, rope_scaling: { type: "linear", factor: 2 } },
      "rope_scaling.type",
    ],
    [
      { ...base, use_sliding_window: true, sliding_window: 64, max_window_layers: 1 },
      "use_sliding_window",
    ],
    [{ ...base, architectures: ["LlamaForCausalLM"] }, "architectures"],
    [{ ...base, num_key_value_heads: 3 }, "num_key_value_heads"],
    [{ ...base, hidden_size: "64" }, "hidden_size"],
    [{ ...base, hidden_act: "gelu" }, "hidden_act"],
  ];
  for (const [raw, field] of cases) {
    assertThrows(() => parseQwenConfig(raw, "x/config.json"), ConfigError, field);
  }
});

async function copyFixture(name: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "model_io_" });
  for await (const e of Deno.readDir(`${HF}${name}`)) {
    await Deno.copyFile(`${HF}${name}/${e.name}`, `${dir}/${e.name}`);
  }
  return dir;
}

Deno.test({
  name: "loadModel() names the tensor and file when a weight is missing or misshapen",
  ...gpuTest,
  fn: async () => {
    const dir = await copyFixture("qwen2-tiny");
    const { tensors } = await readSafetensors(`${dir}/model.safetensors`);
    const without = new Map(
      [...tensors].filter(([n]) => n !== "model.layers.1.mlp.up_proj.weight"),
    );
    await writeSafetensors(`${dir}/model.safetensors`, without);
    await assertRejects(() => loadModel(dir), Error, "model.layers.1.mlp.up_proj.weight");
    const bent = new Map(tensors);
    const t = bent.get("model.norm.weight")!;
    bent.set("model.norm.weight", { ...t, shape: [8, 8] });
    await writeSafetensors(`${dir}/model.safetensors`, bent);
    const err = await assertRejects(() => loadModel(dir), Error, "model.norm.weight");
    assert(err.message.includes("model.safetensors") && err.message.includes("[8,8]"), err.message);
    await Deno.writeTextFile(`${dir}/config.json`, "{ nope");
    await assertRejects(() => loadModel(dir), ConfigError, "config.json");
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name:
    "weights split into row chunks (as past the binding limit) give the same logits and gradients",
  ...gpuTest,
  fn: async () => {
    const whole = await loadModel(`${HF}qwen2-tiny`, { trainable: true });
    const split = await loadModel(`${HF}qwen2-tiny`, { trainable: true, chunkBytes: 16 * 1024 });
    const emb = split.parameter("model.embed_tokens.weight")!;
    assertEquals(emb.chunks.length, 8); // 512 rows x 256 B in 16 KiB chunks of 64 rows
    assert(split.parameter("model.layers.0.mlp.down_proj.weight")!.chunks.length > 1);
    const ids = Tensor.from([3, 400, 511, 7, 0, 260], [2, 3], { dtype: "i32" });
    const run = (m: typeof whole) =>
      tidy(() => {
        const logits = m.forward(ids);
        tokenEntropyLoss(logits, [1, 1, 0, 1, 1, 0]).backward();
        return logits;
      });
    const a = run(whole);
    const b = run(split);
    assertClose(await b.toArray(), await a.toArray(), { atol: 1e-6, rtol: 0 }, "logits");
    for (const p of whole.parameters) {
      const parts = split.parameter(p.name)!.chunks;
      const got = (await Promise.all(parts.map((t) => t.grad!.toArray()))).flatMap((x) =>
        Array.from(x)
      );
      assertClose(
        got,
        await p.chunks[0].grad!.toArray(),
        { atol: 1e-6, rtol: 1e-5 },
        `grad ${p.name}`,
      );
    }
    whole.dispose();
    split.dispose();
  },
});

Deno.test({
  name:
    "headAt() gives the logits rows of forward() at the chosen positions, in any number of chunks",
  ...gpuTest,
  fn: async () => {
    const model = await loadModel(`${HF}qwen2-tiny`, { trainable: true });
    const { entropy, sum } = await import("../engine/ops/mod.ts");
    const ids = Tensor.from([3, 400, 511, 7, 0, 260, 9, 10], [2, 4], { dtype: "i32" });
    const at = [1, 2, 5, 6, 7];
    const full = Array.from(await noGradLogits(model, ids));
    const V = model.config.vocabSize;
    for (const rows of [undefined, 2, 1]) {
      const seen: number[] = [];
      const total = tidy(() =>
        model.headAt(model.hidden(ids), at, (logits, from, to) => {
          assertEquals(logits.shape, [to - from, V]);
          seen.push(from);
          return sum(entropy(logits));
        }, rows)
      );
      const want = at.map((p) => {
        const z = full.slice(p * V, (p + 1) * V);
        const m = Math.max(...z);
        const e = z.map((v) => Math.exp(v - m));
        const s = e.reduce((a, b) => a + b, 0);
        return -e.reduce((a, x, i) => a + (x / s) * ((z[i] - m) - Math.log(s)), 0);
      }).reduce((a, b) => a + b, 0);
      assertClose([await total.item()], [want], { atol: 1e-4 }, `rows per chunk ${rows}`);
      assertEquals(seen.length, rows === undefined ? 1 : Math.ceil(at.length / rows));
    }
    model.dispose();
  },
});

async function noGradLogits(model: Awaited<ReturnType<typeof loadModel>>, ids: Tensor) {
  const { noGrad } = await import("../engine/scope.ts");
  return await noGrad(() => tidy(() => model.forward(ids))).toArray();
}

Deno.test({
  name:
    "generate CLI streams text from a checkpoint with the real Qwen tokenizer; bad input is a clear error",
  ...gpuTest,
  fn: async () => {
    const config = parseQwenConfig({
      ...base,
      vocab_size: 151936,
      hidden_size: 32,
      num_hidden_layers: 1,
      num_attention_heads: 2,
      num_key_value_heads: 1,
      intermediate_size: 64,
    });
    const model = randomModel(config, { seed: 1, std: 0.5 });
    const dir = await Deno.makeTempDir({ prefix: "gen_cli_" });
    await saveModel(model, `${dir}/m`, { copyFrom: TOK });
    model.dispose();
    const run = async (...args: string[]) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL("../infer/cli.ts", import.meta.url).pathname, ...args],
        env: { XDG_RUNTIME_DIR: "/tmp" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      return {
        code: out.code,
        out: new TextDecoder().decode(out.stdout),
        err: new TextDecoder().decode(out.stderr),
      };
    };
    const ok = await run(
      "--model",
      `${dir}/m`,
      "--prompt",
      "What is 2+2?",
      "--chat",
      "--max-new-tokens",
      "4",
      "--greedy",
    );
    assertEquals(ok.code, 0, ok.err);
    assert(/\[4 tokens in/.test(ok.out), ok.out);
    const bad = await run("--model", `${dir}/nope`, "--prompt", "x");
    assertEquals(bad.code, 1);
    assert(bad.err.includes(`${dir}/nope/config.json`), bad.err);
    const flag = await run("--model", `${dir}/m`, "--prompt", "x", "--top-p", "2");
    assertEquals(flag.code, 2);
    assert(flag.err.includes("--top-p"), flag.err);
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "randomNormal() has the requested mean and std, in f32 and bf16",
  ...gpuTest,
  fn: async () => {
    for (const dtype of ["f32", "bf16"] as const) {
      const t = randomNormal([20001], { seed: 3, mean: 1, std: 2, dtype });
      const a = Array.from(await t.toArray());
      const m = a.reduce((s, x) => s + x, 0) / a.length;
      const sd = Math.sqrt(a.reduce((s, x) => s + (x - m) ** 2, 0) / a.length);
      assert(Math.abs(m - 1) < 0.05 && Math.abs(sd - 2) < 0.05, `${dtype}: mean ${m}, std ${sd}`);
      t.dispose();
    }
  },
});
