/** The memory estimate against measured peaks, --dry-run, and the refusal before allocating. */
import { device } from "../engine/device.ts";
import { loadModel } from "../engine/model/checkpoint.ts";
import { AdamW } from "../engine/optim.ts";
import { emFtObjective } from "../train/em_ft.ts";
import { estimateTraining } from "../train/memory.ts";
import { packSequences, scoredBatch } from "../train/objective.ts";
import { accumulateGradients } from "../train/accumulate.ts";
import { assert, assertEquals } from "@std/assert";
import { runCli } from "./_cli.ts";
import { gpuTest } from "./_helpers.ts";

const HF = new URL("./fixtures/hf/", import.meta.url).pathname;
const DEMO = new URL("../demo/model", import.meta.url).pathname;

Deno.test({
  name: "the activation + gradient estimate is within 10% of the measured peak (demo, qwen3-tiny)",
  ...gpuTest,
  fn: async () => {
    const cases = [[DEMO, 256, 8, 5], [`${HF}qwen3-tiny`, 4, 20, 44]] as const;
    for (const [dir, m, P, R] of cases) {
      for (const recompute of [false, true]) {
        const model = await loadModel(dir, { trainable: true });
        const opt = new AdamW(model.tensors(), { lr: 1e-3 });
        const prompts = Array.from(
          { length: m },
          (_, i) => Array.from({ length: P }, (_, j) => (i + j) % 10 + 1),
        );
        const resp = Array.from(
          { length: m },
          (_, i) => Array.from({ length: R }, (_, j) => (3 * i + j) % 10 + 1),
        );
        const batch = scoredBatch(packSequences(prompts, resp, 0));
        const base = device().liveBytes;
        device().resetPeak();
        const acc = accumulateGradients(
          model,
          batch,
          emFtObjective({ nSamples: 1, reduce: "mean" }),
          m,
          undefined,
          recompute,
        );
        await acc.loss.item();
        const measured = device().peakLiveBytes - base;
        const e = estimateTraining(model.config, {
          microBatch: m,
          seqLength: batch.length,
          scored: batch.positions.length,
          weightBytes: 4,
          lora: null,
          recompute,
          reference: false,
          maxBinding: device().info.maxStorageBufferBindingSize,
        });
        const ratio = (e.activations + e.gradients) / measured;
        assert(
          Math.abs(ratio - 1) <= 0.1,
          `${dir} recompute ${recompute}: estimate/measured ${ratio}`,
        );
        [acc.loss, ...Object.values(acc.stats)].forEach((t) => t.dispose());
        opt.zeroGrad();
        opt.dispose();
        model.dispose();
      }
    }
  },
});

Deno.test("--dry-run prints the estimate from config.json alone; a run past --memory-limit is refused", async () => {
  const cfg = new URL("../bench/configs/qwen2.5-math-7b", import.meta.url).pathname;
  const dry = await runCli("../train/cli.ts", [
    "--model",
    cfg,
    "--data",
    "/nonexistent.jsonl",
    "--dry-run",
    "--micro-batch",
    "1",
    "--seq-length",
    "2048",
    "--lora-rank",
    "16",
    "--recompute",
  ]);
  assertEquals(dry.code, 0, dry.stderr);
  assert(
    /7\.62B parameters/.test(dry.stdout) &&
      /fits in 24 GiB \(a "24 GB" card\): (yes|no)/.test(dry.stdout),
    dry.stdout,
  );
  const refused = await runCli("../train/cli.ts", ["--steps", "1", "--memory-limit", "0.01"]);
  assertEquals(refused.code, 2);
  assert(
    refused.stderr.includes("--micro-batch") && refused.stderr.includes("--recompute") &&
      refused.stderr.includes("--lora-rank"),
    refused.stderr,
  );
});

/** The GiB figure of a dry-run line such as `  total     23.28 GiB`. */
function gibOf(report: string, line: string): number {
  const m = report.match(new RegExp(`^\\s+${line}\\s+([\\d.]+) GiB`, "m"));
  if (!m) throw new Error(`no "${line}" line in:\n${report}`);
  return Number(m[1]);
}

Deno.test("quantized dry runs: Qwen2.5-32B with EM-INF in int4 fits 24 GiB, 7B QLoRA fits 12 GiB", async () => {
  const configs = new URL("../bench/configs/", import.meta.url).pathname;
  const decode = (quantize: string[]) =>
    runCli("../infer/cli.ts", [
      "--model",
      `${configs}qwen2.5-32b-instruct`,
      "--dry-run",
      "--em-inf",
      "--batch",
      "1",
      "--context",
      "4096",
      ...quantize,
    ]);
  const [bf16, int4] = [await decode([]), await decode(["--quantize", "int4"])];
  assertEquals(int4.code, 0, int4.stderr);
  // independently: 64 layers of q,o (5120²), k,v (1024·5120), gate,up,down (27648·5120) at
  // 4 bits + an f16 scale and zero per 32 weights; embedding, untied head, norms, q/k/v biases bf16
  const linear = 64 * (2 * 5120 * 5120 + 2 * 1024 * 5120 + 3 * 27648 * 5120);
  const rest = 2 * (2 * 152064 * 5120 + 64 * (2 * 5120 + 5120 + 2 * 1024) + 5120);
  assertEquals(gibOf(int4.stdout, "weights"), +((linear * 5 / 8 + rest) / 2 ** 30).toFixed(2));
  assert(gibOf(int4.stdout, "total") < 24, int4.stdout);
  assert(/fits in 24 GiB \(a "24 GB" card\): yes/.test(int4.stdout), int4.stdout);
  assert(gibOf(bf16.stdout, "total") > 60, bf16.stdout);
  const train = await runCli("../train/cli.ts", [
    "--model",
    `${configs}qwen2.5-math-7b`,
    "--dry-run",
    "--micro-batch",
    "1",
    "--seq-length",
    "2048",
    "--lora-rank",
    "16",
    "--recompute",
    "--quantize",
    "int4",
  ]);
  assertEquals(train.code, 0, train.stderr);
  assert(gibOf(train.stdout, "total") < 12, train.stdout);
});
