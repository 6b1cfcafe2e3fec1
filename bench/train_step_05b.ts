/**
 * One EM-FT update of the Qwen2.5-0.5B-shaped model (random weights, nothing
 * downloaded) at 2 x 512 tokens, in four ways: full f32, full f32 with
 * --recompute, LoRA rank 16 on the bf16 base, and LoRA with --recompute. For
 * each: seconds per step, tokens/s, peak GPU bytes by category, process RSS.
 * The update only (forward, backward, AdamW): rollouts are decode, measured by
 * bench:generate.
 *
 *   deno task bench:train-05b [--tokens 512] [--only full|full-recompute|lora|lora-recompute]
 */
import { parseArgs } from "@std/cli";
import { initDevice } from "../engine/device.ts";
import type { DecoderLM } from "../engine/model/decoder.ts";
import { randomModel } from "../engine/model/init.ts";
import { LORA_TARGETS, LoraAdapters } from "../engine/model/lora.ts";
import { parseQwenConfig } from "../engine/model/qwen.ts";
import { AdamW, clipGradNorm } from "../engine/optim.ts";
import { emFtObjective } from "../train/em_ft.ts";
import { packSequences, scoredBatch } from "../train/objective.ts";
import { accumulateGradients } from "../train/accumulate.ts";
import { QWEN25_05B } from "./_qwen05b.ts";

const flags = parseArgs(Deno.args, { string: ["tokens", "only"] });
const T = Number(flags.tokens ?? 512);
const dev = await initDevice();
const config = parseQwenConfig(QWEN25_05B, "Qwen2.5-0.5B config");
const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
const bytes = (ts: { buffer: GPUBuffer }[]) => ts.reduce((n, t) => n + t.buffer.size, 0);

// 2 sequences: a 32-token prompt, then T - 32 response tokens (fixed, as sampled tokens are)
const ids = (seed: number) =>
  Array.from({ length: T }, (_, i) => (seed * 7919 + i * 104729) % 151643);
const batch = scoredBatch(packSequences([ids(1).slice(0, 32), ids(2).slice(0, 32)], [
  ids(1).slice(32),
  ids(2).slice(32),
], 0));

const ways = [
  { name: "full", lora: false, recompute: false },
  { name: "full-recompute", lora: false, recompute: true },
  { name: "lora", lora: true, recompute: false },
  { name: "lora-recompute", lora: true, recompute: true },
].filter((w) => !flags.only || w.name === flags.only);

console.log(`adapter: ${dev.info.description}; one EM-FT update at 2 x ${T} tokens`);
const rows: string[] = [];
for (const way of ways) {
  const model = randomModel(config, {
    seed: 0,
    dtype: way.lora ? "bf16" : "f32",
    trainable: !way.lora,
  }) as DecoderLM;
  if (way.lora) {
    model.setAdapters(
      LoraAdapters.create(config, { rank: 16, alpha: 32, targets: [...LORA_TARGETS] }),
    );
  }
  const params = model.trainable();
  const opt = new AdamW(params, { lr: 1e-6, weightDecay: 0 });
  await dev.sync();
  const base = dev.liveBytes;
  dev.resetPeak();
  const t0 = performance.now();
  const acc = accumulateGradients(model, batch, emFtObjective({ nSamples: 1, reduce: "mean" }), 1, [
    0,
    1,
  ], way.recompute);
  const norm = clipGradNorm(params, 1);
  opt.update();
  const loss = await acc.loss.item();
  const seconds = (performance.now() - t0) / 1000;
  const peak = dev.peakLiveBytes - base;
  const grads = params.reduce((n, p) => n + 4 * p.size, 0);
  const row = `| ${way.name} | ${seconds.toFixed(1)} | ${(2 * T / seconds).toFixed(0)} | ${
    mib(bytes(model.tensors()))
  } | ${way.lora ? mib(bytes(params)) : "-"} | ${mib(grads)} | ${
    mib(bytes([...opt.m, ...opt.v]))
  } | ${mib(Math.max(0, peak - grads))} | ${
    mib(dev.liveBytes + Math.max(0, peak - (dev.liveBytes - base)))
  } | ${mib(Deno.memoryUsage().rss)} |`;
  console.log(row, `loss ${loss.toFixed(4)}`);
  rows.push(row);
  [norm, acc.loss, ...Object.values(acc.stats)].forEach((t) => t.dispose());
  opt.zeroGrad();
  opt.dispose();
  model.adapters?.dispose();
  model.dispose();
}
console.log(
  "\n| way | s/step | tokens/s | weights | LoRA | gradients | optimizer | activations (peak) | peak GPU total | RSS |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n" +
    rows.join("\n"),
);
