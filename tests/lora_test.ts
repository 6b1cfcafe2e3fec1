/**
 * LoRA: a frozen base in its stored precision, adapters that start at zero,
 * their gradients against float64, PEFT's file format, training, resume, merge.
 */
import { device } from "../engine/device.ts";
import { loadModel } from "../engine/model/checkpoint.ts";
import type { DecoderLM } from "../engine/model/decoder.ts";
import { LoraAdapters, withLora } from "../engine/model/lora.ts";
import { linear } from "../engine/nn.ts";
import { mul, sum } from "../engine/ops/mod.ts";
import { readSafetensors } from "../engine/safetensors.ts";
import { noGrad, tidy } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { DemoSource } from "../demo/source.ts";
import { train } from "../train/trainer.ts";
import type { TrainOptions } from "../train/options.ts";
import { assert, assertEquals } from "@std/assert";
import { assertClose, gpuTest, randArray, tinyModelWithTokenizer, toTensor } from "./_helpers.ts";

const HF = new URL("./fixtures/hf/", import.meta.url).pathname;
const ids = Tensor.from([5, 9, 200, 31, 7, 8, 1, 2], [2, 4], { dtype: "i32" });

async function logits(model: DecoderLM, adapters = true): Promise<number[]> {
  return Array.from(
    await noGrad(() => tidy(() => model.forward(ids, { adapters }))).toArray(),
  );
}

Deno.test({
  name:
    "LoRA with B = 0 gives the base model's logits exactly; the bf16 base stays bf16 and frozen",
  ...gpuTest,
  fn: async () => {
    const model = await loadModel(`${HF}qwen2-tiny-bf16`) as DecoderLM;
    const base = await logits(model);
    model.setAdapters(
      LoraAdapters.create(model.config, { rank: 4, alpha: 8, targets: ["q", "v", "down"] }),
    );
    assertEquals(await logits(model), base);
    const w = model.parameter("model.layers.0.self_attn.q_proj.weight")!.chunks[0];
    assertEquals([w.dtype, w.requiresGrad], ["bf16", false]);
    assertEquals(model.trainable().length, 2 * 3 * model.config.numLayers, "only A and B train");
    model.adapters!.dispose();
    model.dispose();
  },
});

Deno.test({
  name: "LoRA gradients of A and B (and x) match the float64 composition",
  ...gpuTest,
  fn: async () => {
    const [n, inF, out, r, scale] = [3, 8, 6, 2, 1.5];
    const x = randArray([n, inF], 1);
    const W = randArray([out, inF], 2);
    const A = randArray([r, inF], 3);
    const Bm = randArray([out, r], 4);
    const G = randArray([n, out], 5);
    const [tx, ta, tb] = [toTensor(x, true), toTensor(A, true), toTensor(Bm, true)];
    tidy(() => {
      const y = withLora(linear(tx, toTensor(W)), tx, { A: ta, B: tb, scale });
      sum(mul(y, toTensor(G))).backward();
    });
    // float64: y = x Wᵀ + s (x Aᵀ) Bᵀ; L = sum(G ∘ y)
    const at = (m: { data: Float64Array }, cols: number) => (i: number, j: number) =>
      m.data[i * cols + j];
    const [xv, wv, av, bv, gv] = [at(x, inF), at(W, inF), at(A, inF), at(Bm, r), at(G, out)];
    const dA = new Float64Array(r * inF);
    const dB = new Float64Array(out * r);
    const dx = new Float64Array(n * inF);
    for (let i = 0; i < n; i++) {
      for (let o = 0; o < out; o++) {
        for (let k = 0; k < r; k++) {
          let xa = 0;
          for (let j = 0; j < inF; j++) xa += xv(i, j) * av(k, j);
          dB[o * r + k] += scale * gv(i, o) * xa;
          for (let j = 0; j < inF; j++) {
            dA[k * inF + j] += scale * gv(i, o) * bv(o, k) * xv(i, j);
            dx[i * inF + j] += scale * gv(i, o) * bv(o, k) * av(k, j);
          }
        }
        for (let j = 0; j < inF; j++) dx[i * inF + j] += gv(i, o) * wv(o, j);
      }
    }
    assertClose(await ta.grad!.toArray(), dA, { atol: 1e-5, rtol: 1e-4 }, "dA");
    assertClose(await tb.grad!.toArray(), dB, { atol: 1e-5, rtol: 1e-4 }, "dB");
    assertClose(await tx.grad!.toArray(), dx, { atol: 1e-5, rtol: 1e-4 }, "dx");
  },
});

Deno.test({
  name: "LoRA adapters round-trip through PEFT's adapter_model.safetensors and adapter_config.json",
  ...gpuTest,
  fn: async () => {
    const model = await loadModel(`${HF}qwen3-tiny`) as DecoderLM;
    const a = LoraAdapters.create(model.config, {
      rank: 3,
      alpha: 6,
      targets: ["k", "o", "up"],
      seed: 4,
    });
    // non-zero B so the round trip is checked on real values
    for (const ad of a.byWeight.values()) {
      const v = Tensor.randn(ad.B.shape, { seed: 9 });
      device().copy(v.buffer, 0, ad.B.buffer, 0, v.byteLength);
      v.dispose();
    }
    const dir = await Deno.makeTempDir({ prefix: "lora_io_" });
    await a.save(dir, `${HF}qwen3-tiny`);
    const { tensors } = await readSafetensors(`${dir}/adapter_model.safetensors`);
    const A0 = tensors.get("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight")!;
    const B0 = tensors.get("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight")!;
    assertEquals(A0.shape, [3, 64]);
    assertEquals(B0.shape, [160, 3]);
    assertEquals(tensors.size, 2 * 3 * model.config.numLayers);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
    assertEquals([config.peft_type, config.r, config.lora_alpha], ["LORA", 3, 6]);
    assertEquals(config.target_modules.sort(), ["k_proj", "o_proj", "up_proj"]);
    const back = await LoraAdapters.load(dir, model.config);
    for (const [name, ad] of a.byWeight) {
      const b = back.byWeight.get(name)!;
      assertEquals(Array.from(await b.A.toArray()), Array.from(await ad.A.toArray()), name);
      assertEquals(Array.from(await b.B.toArray()), Array.from(await ad.B.toArray()), name);
      assertEquals(b.scale, 2);
    }
    [a, back].forEach((x) => x.dispose());
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  },
});

const quick: Partial<TrainOptions> = {
  steps: 3,
  batchSize: 4,
  nSamples: 2,
  microBatch: 8,
  maxNewTokens: 4,
  lr: 1e-2,
  seed: 3,
};

Deno.test({
  name:
    "LoRA training (EM-FT, EM-RL with the base as reference): only adapters change; resume is bit-exact",
  ...gpuTest,
  fn: async () => {
    const dir = await tinyModelWithTokenizer("lora_train_");
    const attach = async () => {
      const m = await loadModel(dir) as DecoderLM;
      m.setAdapters(
        LoraAdapters.create(m.config, { rank: 2, alpha: 4, targets: ["q", "v", "gate"] }),
      );
      return m;
    };
    const before = await loadModel(dir) as DecoderLM;
    const baseLogits = await logits(before);
    for (const method of ["em-ft", "em-rl"] as const) {
      const model = await attach();
      const r = await train(model, new DemoSource(1), {
        ...quick,
        method,
        outDir: `${dir}/${method}`,
      }, {
        log: () => {},
      });
      assertEquals(await logits(model, false), baseLogits, `${method}: the base is untouched`);
      assert(
        (await logits(model)).some((v, i) => v !== baseLogits[i]),
        `${method}: adapters trained`,
      );
      if (method === "em-rl") {
        assertEquals(r.history[0].referenceBytes, 0, "the reference is the base");
      }
      model.adapters!.dispose();
      model.dispose();
    }
    // resume: 1 step + 2 steps equals 3 steps
    const straight = await attach();
    await train(straight, new DemoSource(2), { ...quick, outDir: `${dir}/a` }, { log: () => {} });
    const a = await logits(straight);
    const first = await attach();
    await train(first, new DemoSource(2), { ...quick, steps: 1, outDir: `${dir}/b` }, {
      log: () => {},
    });
    const resumed = await loadModel(dir) as DecoderLM;
    resumed.setAdapters(await LoraAdapters.load(`${dir}/b/checkpoint`, resumed.config));
    await train(
      resumed,
      new DemoSource(2),
      { ...quick, outDir: `${dir}/b` },
      { log: () => {} },
      `${dir}/b/checkpoint`,
    );
    assertEquals(await logits(resumed), a);
    for (const m of [straight, first, resumed, before]) {
      m.adapters?.dispose();
      m.dispose();
    }
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "--merge writes a full checkpoint whose logits equal the adapted model's",
  ...gpuTest,
  fn: async () => {
    const { saveModel } = await import("../engine/model/checkpoint.ts");
    const model = await loadModel(`${HF}qwen2-tiny`) as DecoderLM;
    const a = LoraAdapters.create(model.config, {
      rank: 2,
      alpha: 2,
      targets: ["q", "down"],
      seed: 1,
    });
    for (const ad of a.byWeight.values()) {
      const v = Tensor.randn(ad.B.shape, { seed: 2, std: 0.1 });
      device().copy(v.buffer, 0, ad.B.buffer, 0, v.byteLength);
      v.dispose();
    }
    model.setAdapters(a);
    const dir = await Deno.makeTempDir({ prefix: "lora_merge_" });
    await saveModel(model, `${dir}/merged`, { merge: true });
    const merged = await loadModel(`${dir}/merged`) as DecoderLM;
    assertClose(await logits(merged), await logits(model), { atol: 1e-4, rtol: 1e-4 }, "logits");
    const base = await logits(model, false);
    assert(
      (await logits(merged)).some((v, i) => Math.abs(v - base[i]) > 1e-3),
      "the merge changed W",
    );
    merged.dispose();
    a.dispose();
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  },
});
