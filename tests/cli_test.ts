import { assert, assertEquals } from "@std/assert";

const CLI = new URL("../train/cli.ts", import.meta.url).pathname;
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

Deno.test("train CLI rejects bad flags naming the flag", async () => {
  for (
    const [args, message] of [
      [["--lr=-3"], "--lr must be a positive number"],
      [["--steps", "1.5"], "--steps must be a positive integer"],
      [["--method", "rl"], "--method must be em-ft or sft"],
      [["--reduce", "max"], "--reduce must be mean or sum"],
      [["--top-p", "0"], "--top-p must be in (0, 1]"],
      [["--resume"], "--resume needs --out"],
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
  const demoModel = new URL("../train/demo/model", import.meta.url).pathname;
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
  const demoModel = new URL("../train/demo/model", import.meta.url).pathname;
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
