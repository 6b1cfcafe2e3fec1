import { readSafetensors, toFloat32 } from "../engine/safetensors.ts";
import { Tensor } from "../engine/tensor.ts";
import { Rng } from "../engine/random.ts";
import { emInfAdjust, emInfAdjustTensor, emInfReference } from "../infer/em_inf.ts";
import { assertEquals, assertThrows } from "@std/assert";
import { assertClose, gpuTest } from "./_helpers.ts";

const FIXTURE = new URL("./fixtures/hf/em_inf_cases.safetensors", import.meta.url).pathname;

Deno.test({
  name:
    "emInfAdjust() reproduces em_inf_cases.safetensors within 1e-4, steps used included, for every setting",
  ...gpuTest,
  fn: async () => {
    const { tensors, metadata } = await readSafetensors(FIXTURE);
    const settings = JSON.parse(metadata.settings) as Record<
      string,
      [number, number, number, number]
    >;
    const used = JSON.parse(metadata.steps_used) as Record<string, number>;
    for (const [s, [lr, steps, klWeight, threshold]] of Object.entries(settings)) {
      // all six rows of a setting in one batch, as in decoding
      const rows = [0, 1, 2, 3, 4, 5];
      const input = rows.flatMap((r) => Array.from(toFloat32(tensors.get(`in.${s}.${r}`)!)));
      const got = await emInfAdjust(Float32Array.from(input), {
        rows: 6,
        vocab: 512,
        lr,
        steps,
        klWeight,
        threshold,
      });
      assertEquals(got.stepsUsed, rows.map((r) => used[`${s}.${r}`]), `steps used, setting ${s}`);
      const want = rows.flatMap((r) => Array.from(toFloat32(tensors.get(`out.${s}.${r}`)!)));
      assertClose(got.logits, want, { atol: 1e-4, rtol: 0 }, `setting ${s}`);
    }
  },
});

Deno.test({
  name:
    "emInfAdjust() on the GPU matches its float64 CPU reference on wide rows, and keeps the argmax",
  ...gpuTest,
  fn: async () => {
    const rng = new Rng(4);
    const V = 3001;
    const scales = [0.5, 2, 6];
    const rows = scales.map((k) => Array.from({ length: V }, () => Math.fround(k * rng.normal())));
    const t = Tensor.from(rows.flat(), [3, V]);
    const o = { lr: 0.1, steps: 8, klWeight: 0.01, threshold: 0.1 };
    const { logits, stepsUsed } = emInfAdjustTensor(t, o);
    const got = await logits.toArray();
    const used = Array.from(await stepsUsed.toArray());
    rows.forEach((row, r) => {
      const ref = emInfReference(row, o);
      assertEquals(used[r], ref.stepsUsed, `steps used, row ${r}`);
      const mine = Array.from(got.slice(r * V, (r + 1) * V));
      assertClose(mine, ref.logits, { atol: 1e-4, rtol: 0 }, `row ${r}`);
      // greedy decoding is unchanged: the top logit stays on top
      assertEquals(mine.indexOf(Math.max(...mine)), row.indexOf(Math.max(...row)));
    });
  },
});

Deno.test("emInfAdjust() rejects bad options and shapes naming them", () => {
  assertThrows(
    () => emInfAdjust(new Float32Array(6), { rows: 2, vocab: 4 }),
    Error,
    "rows * vocab",
  );
  assertThrows(() => emInfAdjustTensor(Tensor.zeros([1, 4]), { lr: -1 }), Error, "lr");
  assertThrows(() => emInfAdjustTensor(Tensor.zeros([1, 4]), { steps: 1.5 }), Error, "steps");
});
