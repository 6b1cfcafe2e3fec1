/**
 * Decoding speed, before/after in one run on one adapter: the run-ahead loop
 * (ids read back in groups) against one readback per token (`readEvery: 1`,
 * the old loop). For each: tokens/s, ms per decoded token, dispatches and
 * readbacks (each an ~11 ms wait in Deno) per decoded token; decode ms per
 * token leaves out the prompt's prefill (a run of one token is subtracted); beside
 * them the floor set by bandwidth: the weight bytes every step streams
 * divided by the GEMV bandwidth measured here on the same adapter.
 *
 *   deno task bench:generate [--big]   (--big adds the Qwen2.5-0.5B-shaped bf16 model, and
 *   its int8 and int4 quantizations)
 */
import { parseArgs } from "@std/cli";
import { initDevice } from "../engine/device.ts";
import { loadModel } from "../engine/model/checkpoint.ts";
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { randomModel } from "../engine/model/init.ts";
import { parseQwenConfig } from "../engine/model/qwen.ts";
import { matmul, randomNormal } from "../engine/ops/mod.ts";
import { noGrad, tidy } from "../engine/scope.ts";
import { DTYPE_BYTES } from "../engine/tensor.ts";
import { generate } from "../infer/generate.ts";
import { QWEN25_05B } from "./_qwen05b.ts";
import { QUANT_SCHEMES } from "../engine/quant/format.ts";
import { quantizeModel } from "../engine/quant/model.ts";

const flags = parseArgs(Deno.args, { boolean: ["big"] });
const dev = await initDevice();
console.log(`adapter: ${dev.info.description}`);

async function measure(model: CausalLM, batch: number, tokens: number, readEvery?: number) {
  const prompts = Array.from({ length: batch }, (_, b) => [1 + (b % 9), 2, 3, 4]);
  const options = { greedy: true, maxNewTokens: tokens, eosTokenIds: [], readEvery };
  await generate(model, prompts, { ...options, maxNewTokens: 2 }); // compile pipelines
  // the prompt's prefill and the first token alone, to take out of the per-token decode time
  const t1 = performance.now();
  await generate(model, prompts, { ...options, maxNewTokens: 1 });
  let firstMs = performance.now() - t1;
  const t3 = performance.now();
  await generate(model, prompts, { ...options, maxNewTokens: 1 });
  firstMs = Math.min(firstMs, performance.now() - t3);
  const count = () => [...dev.dispatchCounts.values()].reduce((a, b) => a + b, 0);
  const [d0, r0, t0] = [count(), dev.reads, performance.now()];
  const r = await generate(model, prompts, options);
  let ms = performance.now() - t0;
  const [d1, r1] = [count(), dev.reads];
  const t2 = performance.now(); // best of two runs: a CPU adapter's timings vary
  await generate(model, prompts, options);
  ms = Math.min(ms, performance.now() - t2);
  const n = r.steps;
  return {
    tokensPerSecond: (batch * n) / (ms / 1000),
    msPerStep: ms / n,
    decodeMsPerToken: (ms - firstMs) / (n - 1),
    dispatchesPerStep: (d1 - d0) / n,
    readbacksPerStep: (r1 - r0) / n,
  };
}

/**
 * GB/s of the decode GEMV (1×896)·(4864×896)ᵀ with weights in `dtype`, as
 * decoding runs it: distinct weights, 1.2 GB in all, so they stream from
 * memory rather than the cache, and one wait amortised over them; best of 3.
 */
async function gemvBandwidth(dtype: "f32" | "bf16"): Promise<number> {
  const [N, K] = [4864, 896];
  const bytes = N * K * DTYPE_BYTES[dtype];
  const ws = Array.from(
    { length: Math.ceil(1.2e9 / bytes) },
    (_, i) => randomNormal([N, K], { seed: i, dtype }),
  );
  const x = randomNormal([1, K], { seed: 2 });
  let best = Infinity;
  for (let run = 0; run < 4; run++) {
    const t0 = performance.now();
    noGrad(() => {
      for (const w of ws) tidy(() => void matmul(x, w, { transB: true }));
    });
    await dev.sync();
    if (run > 0) best = Math.min(best, performance.now() - t0); // run 0 compiles
  }
  [...ws, x].forEach((t) => t.dispose());
  return (ws.length * bytes) / (best / 1000) / 1e9;
}

/** ms per step to stream every weight once at the GEMV bandwidth. */
function gemvFloorMs(model: CausalLM, gbPerS: number): number {
  const bytes = model.tensors().reduce((a, t) => a + t.size * DTYPE_BYTES[t.dtype], 0);
  return bytes / (gbPerS * 1e9) * 1000;
}

const rows: string[] = [];
let floorMs = 0;
async function compare(
  name: string,
  model: CausalLM,
  batch: number,
  tokens: number,
  runAheadOnly = false,
) {
  const before = runAheadOnly ? null : await measure(model, batch, tokens, 1);
  const after = await measure(model, batch, tokens);
  const runs = before
    ? [["one readback per token", before], ["run-ahead", after]] as const
    : [["run-ahead", after]] as const;
  for (const [label, m] of runs) {
    rows.push(
      `| ${name} | ${batch} | ${label} | ${m.tokensPerSecond.toFixed(1)} | ${
        m.msPerStep.toFixed(1)
      } | ${m.decodeMsPerToken.toFixed(1)} | ${floorMs.toFixed(1)} | ${
        m.dispatchesPerStep.toFixed(0)
      } | ${m.readbacksPerStep.toFixed(3)} |`,
    );
  }
  console.log(rows.slice(-runs.length).join("\n"));
}

const demo = await loadModel(new URL("../demo/model", import.meta.url).pathname);
const bandwidth = { f32: await gemvBandwidth("f32"), bf16: await gemvBandwidth("bf16") };
console.log(
  `GEMV 1×896×4864 bandwidth: f32 ${bandwidth.f32.toFixed(2)} GB/s, bf16 ${
    bandwidth.bf16.toFixed(2)
  } GB/s`,
);
floorMs = gemvFloorMs(demo, bandwidth.f32);
for (const batch of [1, 64, 256]) await compare("demo (0.79M)", demo, batch, 32);
demo.dispose();
if (flags.big) {
  const big = randomModel(parseQwenConfig(QWEN25_05B, "Qwen2.5-0.5B config"), { dtype: "bf16" });
  floorMs = gemvFloorMs(big, bandwidth.bf16);
  for (const batch of [1, 16]) await compare("Qwen2.5-0.5B shape, bf16", big, batch, 16);
  // the same weights quantized (linear layers; embedding and tied head stay bf16), beside their
  // own floor: their bytes at the bf16 GEMV's bandwidth
  for (const scheme of ["int8", "int4"] as const) {
    const q = await quantizeModel(big, QUANT_SCHEMES[scheme]);
    floorMs = gemvFloorMs(q, bandwidth.bf16);
    for (const batch of [1, 16]) await compare(`Qwen2.5-0.5B shape, ${scheme}`, q, batch, 16, true);
    q.dispose();
  }
  big.dispose();
}
console.log(
  "\n| model | batch | loop | tokens/s | ms/step | decode ms/token | weights at GEMV GB/s, ms/step | dispatches/step | readbacks/step |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n" +
    rows.join("\n"),
);
