import { assert, assertEquals } from "@std/assert";
import { runCli } from "./_cli.ts";

const CLI = new URL("../train/cli.ts", import.meta.url).pathname;
const [TRAIN, GENERATE, EVAL] = ["../train/cli.ts", "../infer/cli.ts", "../infer/eval_cli.ts"];
const HF = new URL("./fixtures/hf/", import.meta.url).pathname;

async function run(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-write", "--allow-env", CLI, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

Deno.test("train CLI without a WebGPU adapter says what to install, with no stack trace", async () => {
  // D3D12 does not exist on Linux, so no adapter is found.
  const r = await run(["--steps", "1"], { DENO_WEBGPU_BACKEND: "dx12" });
  assertEquals(r.code, 1);
  assert(r.stderr.includes("mesa-vulkan-drivers"), r.stderr);
  assert(!r.stderr.includes("    at "), `no stack trace: ${r.stderr}`);
});

const GPTQ = new URL("./fixtures/quant/gptq-int4", import.meta.url).pathname;

Deno.test("train CLI rejects bad flags naming the flag", async () => {
  for (
    const [args, message] of [
      [["--lr=-3"], "--lr must be a positive number"],
      [["--steps", "1.5"], "--steps must be a positive integer"],
      [["--method", "rl"], "--method must be em-ft, em-rl or sft"],
      [["--reward", "token"], "--reward is an EM-RL flag: add --method em-rl"],
      [["--method", "em-rl", "--reward", "nope"], "--reward must be token, sequence"],
      [["--method", "em-rl", "--n-samples", "1"], "--estimator rloo needs --n-samples >= 2"],
      [["--method", "em-rl", "--stop-on-collapse", "0.5"], "--stop-on-collapse needs --eval-every"],
      [["--lora-alpha", "8"], "--lora-alpha and --lora-targets need --lora-rank R"],
      [["--lora-rank", "4", "--lora-targets", "q,x"], '--lora-targets: "x" is not one of'],
      [["--merge"], "--merge folds LoRA adapters into the weights: it needs --lora-rank R"],
      [["--reduce", "max"], "--reduce must be mean or sum"],
      [["--top-p", "0"], "--top-p must be in (0, 1]"],
      [["--resume"], "--resume needs --out"],
      [["--quantize", "int4"], "--quantize freezes the base's weights as integers"],
      [["--quantize", "int3", "--lora-rank", "4"], '--quantize must be int4 or int8, got "int3"'],
      [
        ["--model", GPTQ, "--lora-rank", "4", "--quantize", "int4"],
        "is a GPTQ int4 checkpoint already; drop --quantize",
      ],
      [["--model", GPTQ], "is a GPTQ checkpoint: its weights are frozen integers"],
      [["--nope"], "nope"],
    ] as [string[], string][]
  ) {
    const r = await run(args);
    assertEquals(r.code, 2, `${args}: ${r.stderr}`);
    assert(r.stderr.includes(message), `${args}: ${r.stderr}`);
  }
});

Deno.test("train CLI names a missing data file, a bad JSONL line and a model without a tokenizer", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cli_test_" });
  const missing = await run([
    "--model",
    `${HF}qwen2-tiny`,
    "--data",
    `${dir}/nope.jsonl`,
    "--out",
    `${dir}/o`,
  ]);
  assertEquals(missing.code, 1);
  assert(missing.stderr.includes(`${HF}qwen2-tiny/tokenizer.json not found`), missing.stderr);
  const tok = `${dir}/m`;
  await Deno.mkdir(tok);
  const data = `${dir}/d.jsonl`;
  await Deno.writeTextFile(data, '{"prompt": "1+1="}\n{"question": "x"}\n');
  const demoModel = new URL("../demo/model", import.meta.url).pathname;
  const bad = await run(["--model", demoModel, "--data", data, "--out", `${dir}/o`]);
  assertEquals(bad.code, 1);
  assert(bad.stderr.includes(`${data}:2: "prompt" must be a non-empty string`), bad.stderr);
  const none = await run([
    "--model",
    demoModel,
    "--data",
    `${dir}/nope.jsonl`,
    "--out",
    `${dir}/o`,
  ]);
  assertEquals(none.code, 1);
  assert(none.stderr.includes(`${dir}/nope.jsonl: cannot read`), none.stderr);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train CLI demo: EM-FT of the shipped model prints the before/after table and leaves the model untouched", async () => {
  const demoModel = new URL("../demo/model", import.meta.url).pathname;
  const before = await Deno.readFile(`${demoModel}/model.safetensors`);
  const dir = await Deno.makeTempDir({ prefix: "cli_demo_" });
  const r = await run([
    "--steps",
    "2",
    "--batch-size",
    "8",
    "--n-samples",
    "2",
    "--out",
    `${dir}/run`,
  ]);
  assertEquals(r.code, 0, r.stderr);
  for (const row of ["accuracy, greedy", "accuracy, sampling T=1", "mean token entropy"]) {
    assert(r.stdout.includes(row), r.stdout);
  }
  const table = r.stdout.split("\n").filter((l) => l.startsWith("|"));
  assertEquals(table.length, 5, r.stdout);
  assert(table.every((l) => l.length === table[0].length), `aligned table:\n${table.join("\n")}`);
  assert(/training throughput: \d+ tokens\/s/.test(r.stdout), r.stdout);
  assert(/step 2\/2 +loss/.test(r.stdout), r.stdout);
  const after = await Deno.readFile(`${demoModel}/model.safetensors`);
  assert(
    before.length === after.length && before.every((b, i) => b === after[i]),
    "the shipped model changed",
  );
  await Deno.stat(`${dir}/run/checkpoint/model.safetensors`);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train CLI demo with --method em-rl: EM-RL of the shipped model prints the table", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cli_demo_rl_" });
  const r = await run([
    "--method",
    "em-rl",
    "--steps",
    "1",
    "--batch-size",
    "8",
    "--out",
    `${dir}/run`,
  ]);
  assertEquals(r.code, 0, r.stderr);
  assert(r.stdout.includes("demo: EM-RL of"), r.stdout);
  assert(/reward token \(mean\), rloo, kl 0\.001/.test(r.stdout), r.stdout);
  assert(
    /step 1\/1 .*reward -?[\d.]+ .*kl [\d.e-]+ .*rollout [\d.]+s .*update [\d.]+s/.test(r.stdout),
    r.stdout,
  );
  for (const row of ["accuracy, greedy", "accuracy, sampling T=1", "mean token entropy"]) {
    assert(r.stdout.includes(row), r.stdout);
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("eval CLI demo: every method on the demo problems with a comparison table", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../infer/eval_cli.ts", import.meta.url).pathname,
      "--limit",
      "40",
      "--k",
      "2",
    ],
    env: { XDG_RUNTIME_DIR: "/tmp" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  for (
    const m of [
      "| greedy |",
      "| sample |",
      "| em-inf |",
      "| adaptive-temp |",
      "self-consistency (maj@2)",
    ]
  ) {
    assert(text.includes(m), text);
  }
  assert(/EM-INF costs [\d.]+x plain sampling per generated token/.test(text), text);
});

/** A demo-model copy with a NaN in one weight. */
async function nanDemoModel(dir: string): Promise<string> {
  const demo = new URL("../demo/model", import.meta.url).pathname;
  const m = `${dir}/nan-model`;
  await Deno.mkdir(m);
  for await (const e of Deno.readDir(demo)) {
    if (e.isFile) await Deno.copyFile(`${demo}/${e.name}`, `${m}/${e.name}`);
  }
  const bytes = await Deno.readFile(`${m}/model.safetensors`);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  const at = 8 + n + header["model.norm.weight"].data_offsets[0];
  new DataView(bytes.buffer).setFloat32(at + 8, NaN, true);
  await Deno.writeFile(`${m}/model.safetensors`, bytes);
  return m;
}

Deno.test("CLIs: strict integers, no stray arguments, empty or too-long prompts, NaN weights", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cli_bad_" });
  const demo = new URL("../demo/model", import.meta.url).pathname;
  const nan = await nanDemoModel(dir);
  for (
    const [module, args, code, message] of [
      ["../train/cli.ts", ["--steps", "0x1"], 2, '--steps must be a positive integer, got "0x1"'],
      ["../train/cli.ts", ["--steps", "Infinity"], 2, "--steps must be a positive integer"],
      ["../train/cli.ts", ["--out", `${dir}/o`, "extra"], 2, 'unexpected argument "extra"'],
      [
        "../infer/cli.ts",
        ["--model", demo, "--prompt", "1", "+1="],
        2,
        'unexpected argument "+1="',
      ],
      ["../infer/cli.ts", ["--model", demo, "--prompt", ""], 2, "the prompt encodes to no tokens"],
      [
        "../infer/cli.ts",
        ["--model", demo, "--prompt", ""],
        2,
        "the prompt encodes to no tokens",
      ],
      [
        "../infer/cli.ts",
        ["--model", demo, "--prompt", "1+".repeat(40)],
        2,
        "the prompt is 80 tokens, more than max_position_embeddings 64",
      ],
      ["../infer/cli.ts", ["--model", nan, "--prompt", "1+1="], 1, 'tensor "model.norm.weight"'],
      [
        "../infer/cli.ts",
        ["--model", nan, "--prompt", "1+1=", "--no-weight-check"],
        1,
        "step 0, row 0: the logits are NaN or Inf",
      ],
      [
        "../infer/eval_cli.ts",
        ["--model", nan, "--no-weight-check", "--limit", "4", "--methods", "greedy"],
        1,
        "the logits are NaN or Inf",
      ],
    ] as [string, string[], number, string][]
  ) {
    const r = await runCli(module, args);
    assertEquals(r.code, code, `${args}: ${r.stdout} ${r.stderr}`);
    assert(r.stderr.includes(message), `${args}: ${r.stderr}`);
    assert(!r.stderr.includes("    at "), `no stack trace: ${r.stderr}`);
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train CLI: a used --out is refused unless --resume or --overwrite; path conflicts first", async () => {
  const { tinyModelWithTokenizer } = await import("./_helpers.ts");
  const model = await tinyModelWithTokenizer("cli_out_");
  const dir = await Deno.makeTempDir({ prefix: "cli_out_run_" });
  const data = `${dir}/d.jsonl`;
  await Deno.writeTextFile(data, '{"prompt": "12+34="}\n{"prompt": "5*6="}\n');
  const out = `${dir}/run`;
  const quick = ["--data", data, "--batch-size", "2", "--n-samples", "1", "--max-new-tokens", "2"];
  const train = (...args: string[]) => runCli("../train/cli.ts", [...quick, ...args]);
  const first = await train("--model", model, "--out", out, "--steps", "2");
  assertEquals(first.code, 0, first.stderr);
  const again = await train("--model", model, "--out", out, "--steps", "1");
  assertEquals(again.code, 2, again.stderr);
  assert(
    again.stderr.includes(`--out ${out} already holds a run (metrics.jsonl, checkpoint)`) &&
      again.stderr.includes("--resume") && again.stderr.includes("--overwrite"),
    again.stderr,
  );
  const inside = await train("--model", `${out}/checkpoint`, "--out", out, "--overwrite");
  assertEquals(inside.code, 2, inside.stderr);
  assert(inside.stderr.includes("lies inside --out"), inside.stderr);
  assert(!inside.stdout.includes("step 1"), "refused before any training step");
  const replaced = await train("--model", model, "--out", out, "--steps", "1", "--overwrite");
  assertEquals(replaced.code, 0, replaced.stderr);
  const steps = (await Deno.readTextFile(`${out}/metrics.jsonl`)).trim().split("\n")
    .map((l) => JSON.parse(l)).filter((m) => !m.eval).map((m) => m.step);
  assertEquals(steps, [1]);
  // a file, a path under a file, and a data line longer than the model's context
  await Deno.writeTextFile(`${dir}/f`, "");
  for (
    const [o, message] of [
      [`${dir}/f`, `--out ${dir}/f is a file`],
      [`${dir}/f/sub`, `--out ${dir}/f/sub: cannot write there`],
    ]
  ) {
    const r = await train("--model", model, "--out", o);
    assertEquals(r.code, 2, r.stderr);
    assert(r.stderr.includes(message), r.stderr);
  }
  await Deno.writeTextFile(data, `{"prompt": "1+1="}\n{"prompt": "${"1+".repeat(200)}"}\n`);
  const long = await train("--model", model, "--out", `${dir}/long`);
  assertEquals(long.code, 1, long.stderr);
  assert(
    long.stderr.includes(
      `${data}:2: the prompt is 400 tokens, more than the model's max_position_embeddings (256)`,
    ),
    long.stderr,
  );
  for (const d of [dir, model]) await Deno.remove(d, { recursive: true });
});

Deno.test("loadModel() initialises the device itself when initDevice() was not called", async () => {
  const dir = await Deno.makeTempDir({ prefix: "first_contact_" });
  const script = `${dir}/first.ts`;
  await Deno.writeTextFile(
    script,
    `import { generate, loadModel } from "${new URL("../mod.ts", import.meta.url)}";
const model = await loadModel("${new URL("../demo/model", import.meta.url).pathname}");
const r = await generate(model, [model.tokenizer!.encode("12+34=")], { greedy: true, maxNewTokens: 3 });
console.log("ids", r.tokens[0].length);`,
  );
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", new URL("../deno.json", import.meta.url).pathname, script],
    env: { XDG_RUNTIME_DIR: "/tmp" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  assertEquals(out.code, 0, text.decode(out.stderr));
  assert(text.decode(out.stdout).includes("ids 3"), text.decode(out.stdout));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("everything checkable is refused before step 1, naming the flag, field or FILE:LINE", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cli_checks_" });
  const demoModel = new URL("../demo/model", import.meta.url).pathname;
  const data = `${dir}/d.jsonl`;
  await Deno.writeTextFile(data, '{"prompt": "12+34=", "answer": "46"}\n');
  const evalData = `${dir}/e.jsonl`;
  await Deno.writeTextFile(evalData, '{"problem": "20+22=", "answer": "42"}\n');
  const file = async (name: string, bytes: string | Uint8Array) => {
    const path = `${dir}/${name}`;
    if (typeof bytes === "string") await Deno.writeTextFile(path, bytes);
    else await Deno.writeFile(path, bytes);
    return path;
  };
  const enc = new TextEncoder();
  const invalidUtf8 = new Uint8Array([
    ...enc.encode('{"prompt": "1+1="}\n{"prompt": "'),
    0xff,
    0xfe,
    ...enc.encode('"}\n'),
  ]);
  const badVocab = `${dir}/vocab`;
  await Deno.mkdir(badVocab);
  for await (const e of Deno.readDir(demoModel)) {
    if (e.isFile) await Deno.copyFile(`${demoModel}/${e.name}`, `${badVocab}/${e.name}`);
  }
  const cfg = JSON.parse(await Deno.readTextFile(`${badVocab}/config.json`));
  await Deno.writeTextFile(`${badVocab}/config.json`, JSON.stringify({ ...cfg, vocab_size: 10 }));
  const user = (d: string, ...more: string[]) => [
    "--model",
    demoModel,
    "--data",
    d,
    "--out",
    `${dir}/o${Math.random()}`,
    "--steps",
    "1",
    ...more,
  ];
  const cases: [string, string[], number, string][] = [
    [
      TRAIN,
      ["--method", "em-rl", "--estimator", "grpo", "--n-samples", "1"],
      2,
      "--estimator grpo needs --n-samples >= 2",
    ],
    [
      TRAIN,
      ["--method", "em-rl", "--estimator", "reinforce", "--n-samples", "1", "--batch-size", "1"],
      2,
      "needs at least 2 rollouts per batch",
    ],
    [
      TRAIN,
      ["--method", "em-rl", "--batch-size", "4", "--ppo-mini-batch", "3"],
      2,
      "--ppo-mini-batch 3 does not divide --batch-size 4",
    ],
    [
      TRAIN,
      user(data, "--eval-every", "2"),
      2,
      "--eval-every evaluates on held-out problems: with --data, also pass --eval-data",
    ],
    [
      TRAIN,
      user(data, "--target-accuracy", "0.5"),
      2,
      "--target-accuracy evaluates on held-out problems",
    ],
    [
      TRAIN,
      ["--lora-rank", "200", "--out", `${dir}/lr`],
      2,
      "--lora-rank 200 exceeds the q projection's size (128 x 128)",
    ],
    [
      TRAIN,
      user(await file("long.jsonl", `{"prompt": "${"1+".repeat(30)}"}\n`), "--max-new-tokens", "5"),
      1,
      "long.jsonl:1: the prompt (60 tokens) plus --max-new-tokens 5 exceed the model's max_position_embeddings (64)",
    ],
    [
      TRAIN,
      user(data, "--chat"),
      1,
      "--chat: " + demoModel + "/tokenizer_config.json has no chat_template",
    ],
    [
      TRAIN,
      user(data).map((a) => a === demoModel ? badVocab : a),
      1,
      `${badVocab}/config.json: vocab_size is 10, but ${badVocab}/tokenizer.json has ids up to 14`,
    ],
    [TRAIN, user(await file("bad.jsonl", invalidUtf8)), 1, "bad.jsonl:2: not valid UTF-8"],
    [
      TRAIN,
      user(await file("drop.jsonl", '{"prompt": "12a+3="}\n')),
      1,
      'drop.jsonl:1: the tokenizer cannot represent "a" (U+0061, character 3)',
    ],
    [
      GENERATE,
      ["--model", demoModel, "--prompt", "1+1=", "--greedy", "--temperature", "0.7"],
      2,
      "--greedy takes the argmax: it contradicts --temperature",
    ],
    [
      GENERATE,
      ["--model", demoModel, "--prompt", "1+1=", "--em-inf", "--em-inf-steps", "0"],
      2,
      "--em-inf-steps must be a positive integer",
    ],
    [
      GENERATE,
      ["--model", demoModel, "--prompt", "1a+1="],
      2,
      '--prompt: the tokenizer cannot represent "a"',
    ],
    [EVAL, ["--methods", ""], 2, "--methods: an empty name"],
    [EVAL, ["--methods", "greedy,sample,greedy"], 2, "--methods lists greedy twice"],
    [EVAL, ["--em-inf-steps", "0"], 2, "--em-inf-steps must be a positive integer"],
    [EVAL, ["--chat", "--limit", "2"], 2, "--chat: "],
  ];
  for (const [module, args, code, message] of cases) {
    const r = await runCli(module, args);
    assertEquals(r.code, code, `${args}: ${r.stdout} ${r.stderr}`);
    assert(r.stderr.includes(message), `${args}: ${r.stderr}`);
    assert(!r.stderr.includes("    at "), `no stack trace: ${r.stderr}`);
  }
  // legitimate but surprising: a warning; a BOM is fine; --eval-data evaluates any data
  const sft = await runCli(TRAIN, ["--method", "sft", "--temperature", "0.5", "--dry-run"]);
  assertEquals(sft.code, 0, sft.stderr);
  assert(
    sft.stderr.includes("warning: --method sft samples nothing: --temperature ignored"),
    sft.stderr,
  );
  const bom = await file("bom.jsonl", "\uFEFF" + '{"prompt": "12+34=", "answer": "46"}\n');
  const r = await runCli(TRAIN, [
    ...user(bom, "--steps", "2", "--max-new-tokens", "5"),
    "--eval-data",
    evalData,
    "--eval-every",
    "1",
    "--batch-size",
    "2",
    "--n-samples",
    "2",
  ]);
  assertEquals(r.code, 0, r.stderr);
  assert(/eval @ step 1: greedyAccuracy \d/.test(r.stdout), r.stdout);
  await Deno.remove(dir, { recursive: true });
});
