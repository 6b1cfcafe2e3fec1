/**
 * How much quantization changes a model, to choose `--quantize`'s schemes
 * and to report their fidelity:
 * 1. every scheme (int4/int8, groups of 32, 64, 128 or a whole row,
 *    symmetric or with zero points) on the demo model's trained weights:
 *    the weights' relative RMS error, bits per weight, and the logits on 200
 *    held-out prompts against f32 (mean KL(p_f32 || p_q), argmax agreement);
 * 2. the chosen int8 and int4 on the Qwen2.5-0.5B-shaped random model
 *    against its bf16 weights: logits' max |error|, mean KL, argmax agreement.
 *
 *   deno task bench:quant [--big]
 */
import { parseArgs } from "@std/cli";
import { initDevice } from "../engine/device.ts";
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { loadModel } from "../engine/model/checkpoint.ts";
import { randomModel } from "../engine/model/init.ts";
import { parseQwenConfig } from "../engine/model/qwen.ts";
import {
  dequantizeMatrix,
  QUANT_SCHEMES,
  quantizeMatrix,
  type QuantScheme,
} from "../engine/quant/format.ts";
import { quantizeModel } from "../engine/quant/model.ts";
import { LINEAR_LAYERS } from "../engine/model/config.ts";
import { toFloat32 } from "../engine/safetensors.ts";
import { noGrad } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { tensorsToRaw } from "../engine/tensor_io.ts";
import { encodeDemo, heldOutProblems } from "../demo/task.ts";
import { QWEN25_05B } from "./_qwen05b.ts";

const flags = parseArgs(Deno.args, { boolean: ["big"] });
const dev = await initDevice();
console.log(`adapter: ${dev.info.description}`);

/** Last-position logits (B, V) of equal-length prompts. */
async function lastLogits(model: CausalLM, prompts: number[][]): Promise<Float32Array[]> {
  const T = prompts[0].length;
  const V = model.config.vocabSize;
  const out: Float32Array[] = [];
  for (let i = 0; i < prompts.length; i += 50) {
    const part = prompts.slice(i, i + 50);
    const logits = noGrad(() =>
      model.forward(Tensor.from(part.flat(), [part.length, T], { dtype: "i32" }))
    );
    const all = new Float32Array(await logits.toArray());
    logits.dispose();
    part.forEach((_, b) => out.push(all.slice((b * T + T - 1) * V, (b * T + T) * V)));
  }
  return out;
}

function maxOf(z: ArrayLike<number>): number {
  let m = -Infinity;
  for (let i = 0; i < z.length; i++) if (z[i] > m) m = z[i];
  return m;
}

function logSoftmax(z: Float32Array): Float64Array {
  const m = maxOf(z);
  const lse = m + Math.log(z.reduce((s, x) => s + Math.exp(x - m), 0));
  return Float64Array.from(z, (x) => x - lse);
}

/** Mean KL(p || q), argmax agreement and max |logit error| of q's logits against p's. */
function compare(p: Float32Array[], q: Float32Array[]) {
  let kl = 0;
  let agree = 0;
  let maxErr = 0;
  p.forEach((pz, i) => {
    const [lp, lq] = [logSoftmax(pz), logSoftmax(q[i])];
    kl += lp.reduce((s, x, j) => s + Math.exp(x) * (x - lq[j]), 0);
    const arg = (z: Float32Array) => z.indexOf(maxOf(z));
    if (arg(pz) === arg(q[i])) agree++;
    pz.forEach((x, j) => maxErr = Math.max(maxErr, Math.abs(x - q[i][j])));
  });
  return { kl: kl / p.length, agree: agree / p.length, maxErr };
}

const demo = await loadModel(new URL("../demo/model", import.meta.url).pathname);
const prompts = heldOutProblems(200).map((p) => encodeDemo(p.prompt).slice(0, 5));
const reference = await lastLogits(demo, prompts);
// the demo's trained linear weights, for the weight error
const linears = new Set(
  Array.from({ length: demo.config.numLayers }, (_, i) => demo.config.names.layer(i))
    .flatMap((n) => LINEAR_LAYERS.map((t) => n[t])),
);
const weights = await Promise.all(
  demo.parameters.filter((p) => linears.has(p.name)).map(async (p) => ({
    shape: p.shape,
    w: toFloat32((await tensorsToRaw(p.chunks))[0]),
  })),
);
const rows: string[] = [];
for (const bits of [4, 8] as const) {
  for (const groupSize of [32, 64, 128, 0]) {
    for (const symmetric of [false, true]) {
      const s: QuantScheme = { bits, groupSize, symmetric };
      let num = 0;
      let den = 0;
      for (const { shape: [n, k], w } of weights) {
        const d = dequantizeMatrix(quantizeMatrix(w, n, k, s));
        w.forEach((x, i) => (num += (x - d[i]) ** 2, den += x * x));
      }
      const q = await quantizeModel(demo, s);
      const c = compare(reference, await lastLogits(q, prompts));
      q.dispose();
      const k = weights[0].shape[1];
      const perWeight = bits + 32 / (groupSize || k);
      rows.push(
        `| int${bits} | ${groupSize || "row"} | ${symmetric ? "symmetric" : "zero points"} | ${
          perWeight.toFixed(2)
        } | ${Math.sqrt(num / den).toFixed(4)} | ${c.kl.toExponential(2)} | ${
          (100 * c.agree).toFixed(1)
        }% |`,
      );
      console.log(rows.at(-1));
    }
  }
}
console.log(
  "\nThe demo's trained weights (K = 128 and 384; bits per weight include the f16 scale and zero):\n" +
    "| bits | group | zero | bits/weight | weight rel. RMS error | logits KL(f32 || q) | argmax agreement |\n" +
    "| --- | --- | --- | --- | --- | --- | --- |\n" + rows.join("\n"),
);
demo.dispose();

if (flags.big) {
  const config = parseQwenConfig(QWEN25_05B, "Qwen2.5-0.5B config");
  const big = randomModel(config, { dtype: "bf16" });
  const bigPrompts = Array.from(
    { length: 8 },
    (_, b) => Array.from({ length: 16 }, (_, t) => (b * 7919 + t * 104729) % config.vocabSize),
  );
  const ref = await lastLogits(big, bigPrompts);
  const out: string[] = [];
  for (const name of ["int8", "int4"] as const) {
    const q = await quantizeModel(big, QUANT_SCHEMES[name]);
    const c = compare(ref, await lastLogits(q, bigPrompts));
    q.dispose();
    out.push(
      `| ${name} | ${c.maxErr.toExponential(2)} | ${c.kl.toExponential(2)} | ${
        (100 * c.agree).toFixed(0)
      }% |`,
    );
    console.log(out.at(-1));
  }
  big.dispose();
  console.log(
    "\nQwen2.5-0.5B shape, random weights (std 0.02), 8 prompts x 16 tokens, last-position logits against bf16:\n" +
      "| weights | max abs logit error | KL(bf16 || q) | argmax agreement |\n| --- | --- | --- | --- |\n" +
      out.join("\n"),
  );
}
