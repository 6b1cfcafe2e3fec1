/**
 * Quantized models end to end: the tiny GPTQ (int4; int8 with act-order) and
 * AWQ checkpoints of tests/fixtures/quant (made by make_fixtures.ts, packed
 * as AutoGPTQ and AutoAWQ pack) load to the logits of their weights
 * unpacked here by reference code; a LoRA EM-FT step on a quantized base
 * gives the loss and adapter gradients of the same step on its dequantized
 * f32 base; --merge writes a bf16 checkpoint; decoding (greedy, EM-INF,
 * adaptive temperature) runs on top; quantizing at load lands near f32.
 */
import { assert, assertEquals, assertRejects } from "@std/assert";
import { initDevice } from "../engine/device.ts";
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { loadModel, saveModel } from "../engine/model/checkpoint.ts";
import { LoraAdapters } from "../engine/model/lora.ts";
import { Rng } from "../engine/random.ts";
import {
  type RawTensor,
  readSafetensors,
  toFloat32,
  writeSafetensors,
} from "../engine/safetensors.ts";
import { noGrad } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { generate } from "../infer/generate.ts";
import { emInfProcessor } from "../infer/em_inf.ts";
import { adaptiveTemperatureProcessor } from "../infer/baselines.ts";
import { encodeDemo, heldOutProblems } from "../demo/task.ts";
import { accumulateGradients } from "../train/accumulate.ts";
import { emFtObjective } from "../train/em_ft.ts";
import { packSequences, scoredBatch } from "../train/objective.ts";
import { assertClose } from "./_helpers.ts";

await initDevice();

const FIXTURES = new URL("./fixtures/quant", import.meta.url).pathname;
const DEMO = new URL("../demo/model", import.meta.url).pathname;
const AWQ_REVERSE = [0, 4, 1, 5, 2, 6, 3, 7];

/**
 * The f32 checkpoint a quantized fixture stands for, written to a temp
 * directory: each linear unpacked with the reference formulas (GPTQ:
 * scales[g, n]·(q - ((z + 1) & maxq)), g = g_idx[k]; AWQ: (q - z)·scales with
 * the interleaved nibble order), every other tensor upcast.
 */
async function dequantizedCopy(name: string): Promise<string> {
  const src = `${FIXTURES}/${name}`;
  const config = JSON.parse(await Deno.readTextFile(`${src}/config.json`));
  const qc = config.quantization_config;
  const { tensors, metadata } = await readSafetensors(`${src}/model.safetensors`);
  const u32 = (t: RawTensor) => new Uint32Array(t.data.slice().buffer);
  const out = new Map<string, { dtype: "F32"; shape: number[]; data: Float32Array }>();
  for (const [key, t] of tensors) {
    if (!/\.(qweight|qzeros|scales|g_idx)$/.test(key)) {
      out.set(key, { dtype: "F32", shape: t.shape, data: toFloat32(t) });
      continue;
    }
    if (!key.endsWith(".qweight")) continue;
    const prefix = key.slice(0, -".qweight".length);
    const qweight = u32(t);
    const qzeros = u32(tensors.get(`${prefix}.qzeros`)!);
    const scales = toFloat32(tensors.get(`${prefix}.scales`)!);
    const b = qc.bits;
    const maxq = 2 ** b - 1;
    const per = 32 / b;
    const [G, N] = tensors.get(`${prefix}.scales`)!.shape;
    const K = qc.quant_method === "gptq" ? t.shape[0] * per : t.shape[0];
    const gIdx = tensors.get(`${prefix}.g_idx`);
    const groupOf = gIdx
      ? new Int32Array(gIdx.data.slice().buffer)
      : Int32Array.from({ length: K }, (_, k) => Math.floor(k / qc.group_size));
    const w = new Float32Array(N * K);
    for (let k = 0; k < K; k++) {
      const g = groupOf[k];
      for (let n = 0; n < N; n++) {
        let q: number;
        let z: number;
        if (qc.quant_method === "gptq") {
          q = (qweight[Math.floor(k / per) * N + n] >>> (b * (k % per))) & maxq;
          z = (((qzeros[g * (N / per) + Math.floor(n / per)] >>> (b * (n % per))) & maxq) + 1) &
            maxq;
        } else {
          q = (qweight[k * (N / 8) + (n >> 3)] >>> (4 * AWQ_REVERSE[n & 7])) & 15;
          z = (qzeros[g * (N / 8) + (n >> 3)] >>> (4 * AWQ_REVERSE[n & 7])) & 15;
        }
        w[n * K + k] = scales[g * N + n] * (q - z);
      }
    }
    assertEquals(G, Math.max(...groupOf) + 1);
    out.set(`${prefix}.weight`, { dtype: "F32", shape: [N, K], data: w });
  }
  const dir = await Deno.makeTempDir({ prefix: `${name}_f32_` });
  await writeSafetensors(`${dir}/model.safetensors`, out, metadata);
  const { quantization_config: _, torch_dtype: __, ...plain } = config;
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ ...plain, dtype: "float32" }));
  for (const f of ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]) {
    await Deno.copyFile(`${src}/${f}`, `${dir}/${f}`);
  }
  return dir;
}

const PROMPTS = heldOutProblems(6).map((p) => encodeDemo(p.prompt).slice(0, 5));

async function logits(model: CausalLM, prompts = PROMPTS): Promise<Float32Array> {
  const t = noGrad(() =>
    model.forward(
      Tensor.from(prompts.flat(), [prompts.length, prompts[0].length], { dtype: "i32" }),
    )
  );
  const out = new Float32Array(await t.toArray());
  t.dispose();
  return out;
}

for (const name of ["gptq-int4", "gptq-int8-actorder", "awq-int4"]) {
  Deno.test(`${name}: loads as published, to the logits of its reference dequantization`, async () => {
    const f32Dir = await dequantizedCopy(name);
    const [q, f] = [await loadModel(`${FIXTURES}/${name}`), await loadModel(f32Dir)];
    try {
      assert(q.parameters.some((p) => p.quant), "quantized linears");
      // decode (GEMV, one row) and prefill (tile) both
      for (const prompts of [PROMPTS, PROMPTS.slice(0, 1).map((p) => p.slice(0, 1))]) {
        assertClose(
          await logits(q, prompts),
          await logits(f, prompts),
          { atol: 2e-4, rtol: 1e-4 },
          name,
        );
      }
    } finally {
      q.dispose();
      f.dispose();
      await Deno.remove(f32Dir, { recursive: true });
    }
  });
}

/** A PEFT adapter on every linear with random A and B (B nonzero, so A has gradients too). */
async function randomAdapter(model: CausalLM): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "qlora_adapter_" });
  const rng = new Rng(4);
  const a = LoraAdapters.create(model.config, {
    rank: 4,
    alpha: 8,
    targets: ["q", "k", "v", "o", "gate", "up", "down"],
    seed: 1,
  });
  for (const ad of a.byWeight.values()) {
    ad.B.dispose();
    // deno-lint-ignore no-explicit-any
    (ad as any).B = Tensor.from(
      Array.from({ length: ad.B.size }, () => 0.05 * rng.normal()),
      ad.B.shape,
    );
  }
  await a.save(dir, model.sourceDir);
  a.dispose();
  return dir;
}

Deno.test("QLoRA: an EM-FT step on the int4 GPTQ base gives the loss and adapter gradients of the step on its dequantized f32 base; EM-RL's reference is the base", async () => {
  const f32Dir = await dequantizedCopy("gptq-int4");
  const [q, f] = [await loadModel(`${FIXTURES}/gptq-int4`), await loadModel(f32Dir)];
  const adapterDir = await randomAdapter(f);
  try {
    const rng = new Rng(9);
    const prompts = heldOutProblems(4).map((p) => encodeDemo(p.prompt));
    const responses = prompts.map(() => Array.from({ length: 4 }, () => rng.int(14)));
    const batch = scoredBatch(packSequences(prompts, responses, 14));
    const results = [];
    for (const m of [q, f]) {
      m.setAdapters(await LoraAdapters.load(adapterDir, m.config));
      const acc = accumulateGradients(m, batch, emFtObjective({ nSamples: 1, reduce: "mean" }), 2);
      const loss = await acc.loss.item();
      const grads = await Promise.all(m.adapters!.tensors().map((t) => t.grad!.toArray()));
      results.push({ loss, grads: grads.flatMap((g) => Array.from(g)) });
      // the base under the adapters: the same quantized buffers, adapters off
      assert(m.base().parameters === m.parameters);
    }
    assertClose([results[0].loss], [results[1].loss], { atol: 1e-6, rtol: 1e-4 }, "loss");
    assertClose(
      results[0].grads,
      results[1].grads,
      { atol: 1e-6, rtol: 2e-3 },
      "adapter gradients",
    );
    assert(results[0].grads.some((g) => g !== 0));
  } finally {
    q.dispose();
    f.dispose();
    await Deno.remove(f32Dir, { recursive: true });
    await Deno.remove(adapterDir, { recursive: true });
  }
});

Deno.test("a quantized base: saveModel refuses it unmerged; --merge writes a bf16 checkpoint of base + adapters", async () => {
  const q = await loadModel(DEMO, { quantize: "int4" });
  const dir = await Deno.makeTempDir({ prefix: "qmerge_" });
  try {
    await assertRejects(() => saveModel(q, `${dir}/plain`), Error, "is quantized (frozen)");
    const adapterDir = await randomAdapter(q);
    q.setAdapters(await LoraAdapters.load(adapterDir, q.config));
    const before = await logits(q);
    await saveModel(q, `${dir}/merged`, { merge: true });
    const config = JSON.parse(await Deno.readTextFile(`${dir}/merged/config.json`));
    assertEquals([config.dtype, config.quantization_config], ["bfloat16", undefined]);
    const merged = await loadModel(`${dir}/merged`);
    // bf16 rounding of the merged weights: logits within a few percent of a logit's scale
    assertClose(await logits(merged), before, { atol: 0.05, rtol: 0.02 }, "merged");
    merged.dispose();
    await Deno.remove(adapterDir, { recursive: true });
  } finally {
    q.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--quantize at load: int8 near f32, int4 further; greedy decoding with the cache follows the full forward; EM-INF and adaptive temperature run on top", async () => {
  const f = await loadModel(DEMO);
  const ref = await logits(f);
  f.dispose();
  const errors: number[] = [];
  for (const scheme of ["int8", "int4"] as const) {
    const q = await loadModel(DEMO, { quantize: scheme });
    const got = await logits(q);
    errors.push(Math.max(...got.map((x, i) => Math.abs(x - ref[i]))));
    // greedy with the KV cache = argmax of the full forward at each step
    const prompt = PROMPTS[0];
    const r = await generate(q, [prompt], { greedy: true, maxNewTokens: 4, eosTokenIds: [] });
    let seq = [...prompt];
    for (const id of r.tokens[0]) {
      const l = await logits(q, [seq]);
      const last = l.slice(l.length - q.config.vocabSize);
      assertEquals(id, last.indexOf(Math.max(...last)));
      seq = [...seq, id];
    }
    for (
      const processor of [
        emInfProcessor({ lr: 0.1, steps: 3, klWeight: 0.001, threshold: 0 }),
        adaptiveTemperatureProcessor({ alpha: 0.5, delta: 0.1 }),
      ]
    ) {
      const out = await generate(q, PROMPTS.slice(0, 2), {
        maxNewTokens: 3,
        seed: 1,
        logitsProcessor: processor,
      });
      assertEquals(out.tokens.length, 2);
    }
    q.dispose();
  }
  assert(errors[0] < 0.2 && errors[0] < errors[1] && errors[1] < 3, `max logit errors ${errors}`);
});
