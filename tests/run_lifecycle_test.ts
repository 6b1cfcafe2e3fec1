/**
 * A training run's life through the real command line, in child processes:
 * resume from what was recorded (contradicting flags refused), one writer per
 * --out, interrupts (SIGINT, SIGKILL) that resume bit for bit, a disk-full
 * save, a damaged trainer_state.json, and PEFT adapters as --model.
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { CliProcess, runCli } from "./_cli.ts";

const TRAIN = "../train/cli.ts";
const DEMO = new URL("../demo/model", import.meta.url).pathname;

/** A work directory with a small JSONL of demo prompts (with answers). */
async function workspace(prefix: string): Promise<{ dir: string; data: string }> {
  const dir = await Deno.makeTempDir({ prefix });
  const data = `${dir}/data.jsonl`;
  const lines = ["12+34=", "56*78=", "99-12=", "20+22=", "31*3=", "44-4="].map((p) =>
    JSON.stringify({ prompt: p, answer: String(eval(p.slice(0, -1))) })
  );
  await Deno.writeTextFile(data, lines.join("\n") + "\n");
  return { dir, data };
}

/** A run on the demo model with the user's data (no demo tables): small and quick. */
const small = (data: string, out: string, ...more: string[]) => [
  "--model",
  DEMO,
  "--data",
  data,
  "--out",
  out,
  "--batch-size",
  "4",
  "--n-samples",
  "2",
  "--max-new-tokens",
  "5",
  "--micro-batch",
  "8",
  ...more,
];

const train = (...args: string[]) => runCli(TRAIN, args);

Deno.test("a resumed run continues as recorded: contradicting flags, other data and a changed file are refused naming both", async () => {
  const { dir, data } = await workspace("lifecycle_record_");
  const out = `${dir}/run`;
  const first = await train(...small(data, out, "--steps", "2", "--lr", "1e-4"));
  assertEquals(first.code, 0, first.stderr);
  const refusals: [string[], string][] = [
    [["--lora-rank", "4", "--lora-targets", "q"], "--lora-rank 4 contradicts the run's recorded 0"],
    [["--lora-rank", "4"], "--lora-rank 4 contradicts the run's recorded 0"],
    [["--method", "em-rl"], "--method em-rl contradicts the run's recorded em-ft"],
    [["--lr", "3e-5"], "--lr 0.00003 contradicts the run's recorded 0.0001"],
    [["--temperature", "0.7"], "--temperature 0.7 contradicts the run's recorded 1"],
    [["--merge"], "--merge folds LoRA adapters into the weights, but the run"],
  ];
  for (const [args, message] of refusals) {
    const r = await train("--resume", "--out", out, ...args);
    assertEquals(r.code, 2, `${args}: ${r.stderr}`);
    assertStringIncludes(r.stderr, message, `${args}`);
  }
  const other = `${dir}/other.jsonl`;
  await Deno.writeTextFile(other, '{"prompt": "1+1="}\n');
  const otherData = await train("--resume", "--out", out, "--data", other);
  assertEquals(otherData.code, 2);
  assertStringIncludes(otherData.stderr, `--data ${other} is not the run's recorded data ${data}`);
  // the run extends with no --data: the recorded file and lr (not the demo's)
  const extend = await train("--resume", "--out", out, "--steps", "3");
  assertEquals(extend.code, 0, extend.stderr);
  assertStringIncludes(extend.stdout, "resuming with --steps 3 (recorded 2)");
  assertStringIncludes(extend.stdout, "lr 0.0001");
  assertStringIncludes(extend.stdout, "step 3/3");
  const done = await train("--resume", "--out", out, "--steps", "3");
  assertEquals(done.code, 0);
  assertStringIncludes(done.stdout, "the run already reached step 3 of 3; nothing to do");
  await Deno.writeTextFile(data, '{"prompt": "7+7="}\n', { append: true });
  const changed = await train("--resume", "--out", out, "--steps", "4");
  assertEquals(changed.code, 2);
  assertStringIncludes(changed.stderr, `${data} changed since the run started`);
  // a LoRA run keeps its rank
  const lora = `${dir}/lora`;
  await Deno.writeTextFile(
    data,
    (await Deno.readTextFile(data)).split("\n").slice(0, 6).join("\n"),
  );
  const l = await train(
    ...small(data, lora, "--steps", "1", "--lora-rank", "2", "--lora-targets", "q"),
  );
  assertEquals(l.code, 0, l.stderr);
  const rank = await train("--resume", "--out", lora, "--lora-rank", "8");
  assertEquals(rank.code, 2);
  assertStringIncludes(rank.stderr, "--lora-rank 8 contradicts the run's recorded 2");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("two trainers started together on one --out: one runs, the other is refused with its pid; a stale lock is taken over", async () => {
  const { dir, data } = await workspace("lifecycle_lock_");
  const out = `${dir}/run`;
  const [a, b] = [0, 1].map(() => new CliProcess(TRAIN, small(data, out, "--steps", "2")));
  const [sa, sb] = await Promise.all([a.status(), b.status()]);
  const codes = [sa.code, sb.code].sort();
  assertEquals(codes, [0, 2], `${a.stderr}\n${b.stderr}`);
  const [winner, loser] = sa.code === 0 ? [a, b] : [b, a];
  assertStringIncludes(loser.stderr, `is in use by another trainer (pid ${winner.child.pid}`);
  const steps = (await Deno.readTextFile(`${out}/metrics.jsonl`)).trim().split("\n")
    .map((l) => JSON.parse(l)).filter((m) => !m.eval).map((m) => m.step);
  assertEquals(steps, [1, 2], "each step logged once, by one writer");
  // a lock left by a process that is gone (the winner, now exited) is taken over
  await Deno.writeTextFile(
    `${out}/.lock`,
    JSON.stringify({ pid: winner.child.pid, host: Deno.hostname(), started: null }),
  );
  const r = await train("--resume", "--out", out, "--steps", "3");
  assertEquals(r.code, 0, r.stderr);
  assertStringIncludes(r.stdout, `taking over a stale lock (pid ${winner.child.pid}`);
  await Deno.remove(dir, { recursive: true });
});

for (const signal of ["SIGINT", "SIGKILL"] as const) {
  Deno.test(`a run stopped by ${signal} at a step resumes with only --resume --out and matches the uninterrupted run bit for bit`, async () => {
    const { dir, data } = await workspace(`lifecycle_${signal}_`);
    const args = (out: string, ...more: string[]) =>
      small(data, out, "--steps", "4", "--seed", "3", ...more);
    const straight = await train(...args(`${dir}/straight`));
    assertEquals(straight.code, 0, straight.stderr);
    const p = new CliProcess(TRAIN, args(`${dir}/cut`, "--save-every", "1"));
    await p.waitFor(/step 2\/4/);
    p.child.kill(signal);
    const status = await p.status();
    if (signal === "SIGINT") {
      assertEquals(status.code, 130, p.stderr);
      assert(
        /interrupted at step [23]; checkpoint .*\/cut\/checkpoint; continue with --resume/.test(
          p.stdout,
        ),
        p.stdout,
      );
    } else assertEquals(status.signal, "SIGKILL");
    const resumed = await train("--resume", "--out", `${dir}/cut`);
    assertEquals(resumed.code, 0, resumed.stderr);
    const [x, y] = await Promise.all(
      [`${dir}/straight`, `${dir}/cut`].map((o) =>
        Deno.readFile(`${o}/checkpoint/model.safetensors`)
      ),
    );
    assert(x.length === y.length && x.every((v, i) => v === y[i]), "final weights differ");
    const metrics = (await Deno.readTextFile(`${dir}/cut/metrics.jsonl`)).trim().split("\n")
      .map((l) => JSON.parse(l).step);
    assertEquals(metrics, [1, 2, 3, 4], "each step once in metrics.jsonl");
    await Deno.remove(dir, { recursive: true });
  });
}

Deno.test({
  name:
    "a checkpoint that cannot be written (disk full) is one line naming the path and cause; the previous one stays",
  // a small tmpfs is mounted with bubblewrap, which CI installs
  ignore: !["/usr/bin/bwrap", "/bin/bwrap"].some((p) => {
    try {
      return Deno.statSync(p).isFile;
    } catch {
      return false;
    }
  }),
  fn: async () => {
    const { dir, data } = await workspace("lifecycle_enospc_");
    // a 14 MB tmpfs (bubblewrap): the step-1 checkpoint fits (9.5 MB), the swap to step 2 does not
    const small14 = `${dir}/small`;
    await Deno.mkdir(small14);
    const out = `${small14}/run`;
    const script = `"${Deno.execPath()}" run -A ${new URL(TRAIN, import.meta.url).pathname} ${
      small(data, out, "--steps", "3", "--save-every", "1").join(" ")
    }; echo "exit=$?"; grep '"step"' ${out}/checkpoint/trainer_state.json; ls ${out}`;
    const r = await new Deno.Command("bwrap", {
      args: ["--dev-bind", "/", "/", "--size", "14000000", "--tmpfs", small14, "sh", "-c", script],
      env: { XDG_RUNTIME_DIR: "/tmp" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const [stdout, stderr] = [r.stdout, r.stderr].map((b) => new TextDecoder().decode(b));
    assertStringIncludes(stdout, "exit=1");
    const errors = stderr.split("\n").filter((l) => l.startsWith("error:"));
    assertEquals(errors.length, 1, stderr);
    assertStringIncludes(errors[0], `could not save the checkpoint at step 2 to ${out}/checkpoint`);
    assertStringIncludes(errors[0], "No space left on device");
    assert(!stderr.includes("    at "), `no stack trace: ${stderr}`);
    assertStringIncludes(stdout, '"step": 1,', "the step-1 checkpoint is intact");
    assert(!/checkpoint\.(tmp|new|old)-/.test(stdout), `no leftovers: ${stdout}`);
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("a truncated or damaged trainer_state.json is an error naming the file", async () => {
  const { dir, data } = await workspace("lifecycle_state_");
  const out = `${dir}/run`;
  assertEquals((await train(...small(data, out, "--steps", "1"))).code, 0);
  const path = `${out}/checkpoint/trainer_state.json`;
  const text = await Deno.readTextFile(path);
  await Deno.writeTextFile(path, text.slice(0, 40));
  const truncated = await train("--resume", "--out", out, "--steps", "2");
  assertEquals(truncated.code, 1);
  assertStringIncludes(truncated.stderr, `${path}: not valid JSON`);
  await Deno.writeTextFile(path, JSON.stringify({ ...JSON.parse(text), step: -1 }));
  const damaged = await train("--resume", "--out", out, "--steps", "2");
  assertStringIncludes(damaged.stderr, `${path}: "step" is missing or not an integer >= 0`);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a PEFT adapter directory as --model: generate, eval and train load its base and apply it; a missing base names the field", async () => {
  const { dir, data } = await workspace("lifecycle_peft_");
  const lora = `${dir}/lora`;
  const r = await train(
    ...small(data, lora, "--steps", "1", "--lora-rank", "2", "--lora-targets", "q,v"),
  );
  assertEquals(r.code, 0, r.stderr);
  const adapter = `${lora}/checkpoint`;
  const gen = await runCli("../infer/cli.ts", [
    "--model",
    adapter,
    "--prompt",
    "12+34=",
    "--greedy",
    "--max-new-tokens",
    "4",
  ]);
  assertEquals(gen.code, 0, gen.stderr);
  const ev = await runCli("../infer/eval_cli.ts", [
    "--model",
    adapter,
    "--limit",
    "3",
    "--methods",
    "greedy",
    "--format",
    "raw",
    "--max-new-tokens",
    "5",
  ]);
  assertEquals(ev.code, 0, ev.stderr);
  const more = await train(
    ...small(data, `${dir}/more`, "--steps", "1").map((a) => a === DEMO ? adapter : a),
  );
  assertEquals(more.code, 0, more.stderr);
  const state = JSON.parse(await Deno.readTextFile(`${dir}/more/checkpoint/trainer_state.json`));
  assertEquals(state.options.loraRank, 0, "the adapter's own rank trains (no new adapters)");
  await Deno.stat(`${dir}/more/checkpoint/adapter_model.safetensors`);
  const config = JSON.parse(await Deno.readTextFile(`${adapter}/adapter_config.json`));
  await Deno.writeTextFile(
    `${adapter}/adapter_config.json`,
    JSON.stringify({ ...config, base_model_name_or_path: "Qwen/Not-Here" }),
  );
  const missing = await runCli("../infer/cli.ts", ["--model", adapter, "--prompt", "1+1="]);
  assertEquals(missing.code, 1);
  assertStringIncludes(
    missing.stderr,
    `${adapter}/adapter_config.json: base_model_name_or_path "Qwen/Not-Here" is not a checkpoint directory here`,
  );
  await Deno.remove(dir, { recursive: true });
});
