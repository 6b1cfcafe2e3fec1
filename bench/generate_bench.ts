/**
 * Decoding speed, before/after in one run on one adapter: the run-ahead loop
 * (ids read back in groups) against one readback per token (`readEvery: 1`,
 * the old loop). For each: tokens/s, ms per decoded token, dispatches and
 * readbacks (each an ~11 ms wait in Deno) per decoded token.
 *
 *   deno task bench:generate [--big]   (--big adds the Qwen2.5-0.5B-shaped bf16 model)
 */
import { parseArgs } from "@std/cli";
import { initDevice } from "../engine/device.ts";
import { loadModel } from "../engine/model/checkpoint.ts";
import { type CausalLM, randomModel } from "../engine/model/decoder.ts";
import { parseQwenConfig } from "../engine/model/qwen.ts";
import { generate } from "../infer/generate.ts";
import { QWEN25_05B } from "./_qwen05b.ts";

const flags = parseArgs(Deno.args, { boolean: ["big"] });
const dev = await initDevice();
console.log(`adapter: ${dev.info.description}`);

async function measure(model: CausalLM, batch: number, tokens: number, readEvery?: number) {
  const prompts = Array.from({ length: batch }, (_, b) => [1 + (b % 9), 2, 3, 4]);
  const options = { greedy: true, maxNewTokens: tokens, eosTokenIds: [], readEvery };
  await generate(model, prompts, { ...options, maxNewTokens: 2 }); // compile pipelines
  const count = () => [...dev.dispatchCounts.values()].reduce((a, b) => a + b, 0);
  const [d0, r0, t0] = [count(), dev.reads, performance.now()];
  const r = await generate(model, prompts, options);
  const ms = performance.now() - t0;
  const n = r.steps;
  return {
    tokensPerSecond: (batch * n) / (ms / 1000),
    msPerStep: ms / n,
    dispatchesPerStep: (count() - d0) / n,
    readbacksPerStep: (dev.reads - r0) / n,
  };
}

const rows: string[] = [];
async function compare(name: string, model: CausalLM, batch: number, tokens: number) {
  const before = await measure(model, batch, tokens, 1);
  const after = await measure(model, batch, tokens);
  for (const [label, m] of [["one readback per token", before], ["run-ahead", after]] as const) {
    rows.push(
      `| ${name} | ${batch} | ${label} | ${m.tokensPerSecond.toFixed(1)} | ${
        m.msPerStep.toFixed(1)
      } | ${m.dispatchesPerStep.toFixed(0)} | ${m.readbacksPerStep.toFixed(3)} |`,
    );
  }
  console.log(rows.slice(-2).join("\n"));
}

const demo = await loadModel(new URL("../demo/model", import.meta.url).pathname);
for (const batch of [1, 64, 256]) await compare("demo (0.79M)", demo, batch, 32);
demo.dispose();
if (flags.big) {
  const big = randomModel(parseQwenConfig(QWEN25_05B, "Qwen2.5-0.5B config"), { dtype: "bf16" });
  for (const batch of [1, 16]) await compare("Qwen2.5-0.5B shape, bf16", big, batch, 8);
  big.dispose();
}
console.log(
  "\n| model | batch | loop | tokens/s | ms/step | dispatches/step | readbacks/step |\n| --- | --- | --- | --- | --- | --- | --- |\n" +
    rows.join("\n"),
);
