/**
 * Scale check: a model with Qwen2.5-0.5B's exact config and random bf16
 * weights (made on the GPU, nothing downloaded) loads, runs a forward over 64
 * tokens and decodes 8 tokens. Prints memory and time.
 *
 *   deno task scale-check [--dtype bf16|f32]
 */
import { parseArgs } from "@std/cli";
import { initDevice } from "../engine/device.ts";
import { parseQwenConfig } from "../engine/model/qwen.ts";
import { parameterBytes } from "../engine/model/causal_lm.ts";
import { randomModel } from "../engine/model/init.ts";
import { nonFiniteCounts } from "../engine/ops/mod.ts";
import { noGrad, tidy } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { generate } from "../infer/generate.ts";
import { QWEN25_05B } from "./_qwen05b.ts";

const flags = parseArgs(Deno.args, { string: ["dtype"] });
const dtype = (flags.dtype ?? "bf16") as "bf16" | "f32";
if (dtype !== "bf16" && dtype !== "f32") {
  throw new Error(`--dtype must be bf16 or f32, got ${flags.dtype}`);
}
const dev = await initDevice();
const config = parseQwenConfig(QWEN25_05B, "Qwen2.5-0.5B config");
let t0 = performance.now();
const model = randomModel(config, { seed: 0, dtype });
await dev.sync();
const params = model.parameters.reduce((s, p) => s + p.shape.reduce((a, b) => a * b, 1), 0);
console.log(`adapter: ${dev.info.description}`);
console.log(
  `parameters: ${(params / 1e6).toFixed(1)}M, ${dtype} weights ${
    (parameterBytes(model) / 2 ** 20).toFixed(0)
  } MiB; ` +
    `embedding in ${
      model.parameter("model.embed_tokens.weight")!.chunks.length
    } row chunks; created in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
);

// the NaN/Inf check loadModel runs over every weight (one GPU pass, one readback)
t0 = performance.now();
const bad = (await nonFiniteCounts(model.tensors())).reduce((a, b) => a + b, 0);
console.log(
  `weight finiteness check: ${((performance.now() - t0) / 1000).toFixed(2)} s, ${bad} NaN/Inf`,
);

const ids = Tensor.from(Array.from({ length: 64 }, (_, i) => (i * 7919) % 151936), [1, 64], {
  dtype: "i32",
});
t0 = performance.now();
const logits = noGrad(() => tidy(() => model.forward(ids)));
const row = await logits.toArray();
const fwd = (performance.now() - t0) / 1000;
console.log(
  `forward over 64 tokens: ${fwd.toFixed(1)} s (${
    (2 * params * 64 / fwd / 1e9).toFixed(2)
  } GFLOP/s), logits [${logits.shape}] finite: ${row.every(Number.isFinite)}`,
);
console.log(
  `GPU memory after forward: ${(dev.pooledBytes / 2 ** 20).toFixed(0)} MiB pooled, ${
    (dev.liveBytes / 2 ** 20).toFixed(0)
  } MiB live`,
);
logits.dispose();

t0 = performance.now();
const r = await generate(model, [Array.from(await ids.toArray())], {
  greedy: true,
  maxNewTokens: 8,
  eosTokenIds: [],
});
const dec = (performance.now() - t0) / 1000;
console.log(
  `decode 8 tokens (64-token prompt prefill included): ${dec.toFixed(1)} s; ids ${
    r.tokens[0].join(" ")
  }`,
);
console.log(
  `GPU memory at the end: ${(dev.pooledBytes / 2 ** 20).toFixed(0)} MiB pooled, ${
    (dev.liveBytes / 2 ** 20).toFixed(0)
  } MiB live`,
);
