/**
 * Bad input through the library: each case gives a clear error (naming the
 * file, tensor, step or row) or a recoverable state, never a wrong answer.
 */
import { recoverDirectory } from "../engine/atomic.ts";
import { loadModel, saveModel } from "../engine/model/checkpoint.ts";
import {
  embedding,
  entropy,
  logSoftmax,
  mul,
  nonFiniteCounts,
  nonFiniteCountsReference,
  sum,
} from "../engine/ops/mod.ts";
import { readSafetensors, writeSafetensors } from "../engine/safetensors.ts";
import { noGrad, tidy } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { generate, NonFiniteLogitsError } from "../infer/generate.ts";
import { sampleTokens } from "../infer/sampling.ts";
import { tokenEntropyLoss } from "../train/em_ft.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "@std/assert";
import { assertClose, gpuTest } from "./_helpers.ts";

const DEMO = new URL("../demo/model", import.meta.url).pathname;
const HF = new URL("./fixtures/hf/", import.meta.url).pathname;

/** A copy of the demo model whose checkpoint tensors are rewritten by `edit`. */
async function demoCopy(
  edit: (tensors: Map<string, { dtype: "F32"; shape: number[]; data: Uint8Array }>) => void =
    () => {},
  config: (c: Record<string, unknown>) => void = () => {},
): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "bad_input_" });
  for await (const e of Deno.readDir(DEMO)) {
    if (e.isFile) await Deno.copyFile(`${DEMO}/${e.name}`, `${dir}/${e.name}`);
  }
  const { tensors, metadata } = await readSafetensors(`${DEMO}/model.safetensors`);
  const editable = new Map(
    [...tensors].map(([k, t]) => [k, { dtype: "F32" as const, shape: t.shape, data: t.data }]),
  );
  edit(editable);
  await writeSafetensors(`${dir}/model.safetensors`, editable, metadata);
  const c = JSON.parse(await Deno.readTextFile(`${DEMO}/config.json`));
  config(c);
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(c));
  return dir;
}

function poison(t: { data: Uint8Array }, at: number, value: number) {
  new DataView(t.data.buffer, t.data.byteOffset).setFloat32(4 * at, value, true);
}

Deno.test({
  name: "sampleTokens() never returns an id outside the vocabulary and flags NaN/+Inf rows",
  ...gpuTest,
  fn: async () => {
    const V = 15;
    const rows = [
      Array.from({ length: V }, (_, j) => j * 0.1), // fine
      Array.from({ length: V }, (_, j) => (j === 4 ? NaN : 0)), // NaN
      Array.from({ length: V }, (_, j) => (j === 9 ? Infinity : 0)), // +Inf
      new Array(V).fill(-Infinity), // nothing can be sampled
      Array.from({ length: V }, (_, j) => (j < 13 ? -Infinity : 1)), // -Inf bans 0..12
    ];
    for (const options of [{ greedy: true }, { temperature: 1 }, { topK: 3, topP: 0.9 }]) {
      const flags = Tensor.zeros([rows.length], { dtype: "i32" });
      const logits = Tensor.from(rows.flat(), [rows.length, V]);
      const ids = sampleTokens(logits, options, [0.3, 0.5, 0.5, 0.5, 0.99], { flags, step: 6 });
      const got = Array.from(await ids.toArray());
      assert(got.every((id) => id >= 0 && id < V), `${JSON.stringify(options)}: ids ${got}`);
      assertEquals(Array.from(await flags.toArray()), [0, 7, 7, 7, 0], JSON.stringify(options));
      assert(got[4] >= 13, `banned tokens are never sampled: ${got[4]}`);
      [flags, logits, ids].forEach((t) => t.dispose());
    }
  },
});

Deno.test({
  name: "nonFiniteCounts() counts NaN/Inf in f32, bf16 and f16 tensors like its CPU reference",
  ...gpuTest,
  fn: async () => {
    const values = Array.from(
      { length: 37 },
      (_, i) => (i % 7 === 3 ? NaN : i % 11 === 5 ? -Infinity : i),
    );
    const want = nonFiniteCountsReference([values])[0];
    assertEquals(want, 8);
    for (const dtype of ["f32", "bf16", "f16"] as const) {
      const t = Tensor.from(values, [37], { dtype });
      assertEquals(await nonFiniteCounts([t, Tensor.ones([5], { dtype })]), [want, 0], dtype);
      t.dispose();
    }
  },
});

Deno.test({
  name:
    "loadModel() refuses NaN/Inf weights naming the tensor; generate() then names the step and row",
  ...gpuTest,
  fn: async () => {
    const name = "model.layers.2.mlp.down_proj.weight";
    const dir = await demoCopy((t) => poison(t.get(name)!, 17, NaN));
    const err = await assertRejects(() => loadModel(dir));
    assert(
      err.message.includes(`${dir}/model.safetensors: tensor "${name}" holds 1 NaN/Inf`),
      err.message,
    );
    assert(err.message.includes("checkFinite: false"), err.message);
    const model = await loadModel(dir, { checkFinite: false });
    const e = await assertRejects(
      () => generate(model, [[1, 2, 10], [3, 4, 11]], { maxNewTokens: 4 }),
      NonFiniteLogitsError,
    );
    assert(e instanceof NonFiniteLogitsError);
    assertEquals([e.step, e.row], [0, 0]);
    assert(
      e.message.includes("step 0, row 0") && e.message.includes("non-finite weights"),
      e.message,
    );
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "loadModel() refuses checkpoint layers the config does not use and warns of other tensors",
  ...gpuTest,
  fn: async () => {
    const fewer = await demoCopy(undefined, (c) => c.num_hidden_layers = 2);
    const err = await assertRejects(() => loadModel(fewer));
    assert(
      err.message.includes("layer 2") && err.message.includes("num_hidden_layers 2"),
      err.message,
    );
    const extra = await demoCopy((t) =>
      t.set("score.weight", { dtype: "F32", shape: [1], data: new Uint8Array(4) })
    );
    const warnings: string[] = [];
    const model = await loadModel(extra, { warn: (m) => warnings.push(m) });
    assertEquals(warnings.length, 1);
    assert(warnings[0].includes("weights not used") && warnings[0].includes("score.weight"));
    model.dispose();
    for (const d of [fewer, extra]) await Deno.remove(d, { recursive: true });
  },
});

Deno.test({
  name:
    "embedding() and model.forward() with an id outside the vocabulary fail at the next readback",
  ...gpuTest,
  fn: async () => {
    const model = await loadModel(DEMO);
    for (const bad of [99, -1]) {
      const logits = noGrad(() =>
        tidy(() => model.forward(Tensor.from([1, bad, 3], [1, 3], { dtype: "i32" })))
      );
      const err = await assertRejects(() => logits.toArray());
      assert(err.message.includes(`outside the vocabulary [0, 15)`), err.message);
      assert(err.message.includes(`e.g. ${bad}`), err.message);
      logits.dispose();
    }
    // reported once: the next read is clean
    const ok = noGrad(() =>
      tidy(() => model.forward(Tensor.from([1, 2], [1, 2], { dtype: "i32" })))
    );
    assertEquals((await ok.toArray()).length, 2 * 15);
    const w = Tensor.ones([4, 2]);
    const e = embedding(w, Tensor.from([0, 4], [2], { dtype: "i32" }));
    await assertRejects(() => e.toArray(), Error, "[0, 4)");
    [ok, w, e].forEach((t) => t.dispose());
    model.dispose();
  },
});

Deno.test({
  name: "a save killed between its two renames is recovered by loadModel and leaves no temp dirs",
  ...gpuTest,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "swap_kill_" });
    const out = `${dir}/checkpoint`;
    const first = await loadModel(`${HF}qwen2-tiny`);
    await saveModel(first, out);
    first.dispose();
    // a child saves qwen3-tiny over it and is killed while neither is at `out`
    const script = `${dir}/child.ts`;
    await Deno.writeTextFile(
      script,
      `import { loadModel, saveModel } from "${new URL(
        "../engine/model/checkpoint.ts",
        import.meta.url,
      )}";
const m = await loadModel("${HF}qwen3-tiny");
await saveModel(m, "${out}", { afterRetiringOld: async () => {
  console.log("BETWEEN");
  await new Promise(() => setInterval(() => {}, 1000));
} });`,
    );
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--config", new URL("../deno.json", import.meta.url).pathname, script],
      env: { XDG_RUNTIME_DIR: "/tmp" },
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const reader = child.stdout.getReader();
    let seen = "";
    while (!seen.includes("BETWEEN")) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += new TextDecoder().decode(value);
    }
    assert(seen.includes("BETWEEN"), "the child reached the window between the renames");
    child.kill("SIGKILL");
    await child.status;
    reader.releaseLock();
    await child.stdout.cancel().catch(() => {});
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert(!names.includes("checkpoint"), `no checkpoint/ left: ${names}`);
    assert(names.some((n) => n.startsWith("checkpoint.new-")), `${names}`);
    assert(names.some((n) => n.startsWith("checkpoint.old-")), `${names}`);
    // loadModel completes the swap: the new model (qwen3, untied head) is in place
    const back = await loadModel(out);
    assertEquals(back.config.architecture, "Qwen3ForCausalLM");
    back.dispose();
    const after = [];
    for await (const e of Deno.readDir(dir)) after.push(e.name);
    assertEquals(after.sort(), ["checkpoint", "child.ts"]);
    assertEquals(await recoverDirectory(out), null);
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "Tensor shapes must be non-negative integers; tokenEntropyLoss takes a Tensor mask",
  ...gpuTest,
  fn: async () => {
    assertThrows(() => Tensor.zeros([-1, 3]), Error, "shape must be non-negative integers");
    assertThrows(() => Tensor.empty([1.5]), Error, "shape must be non-negative integers");
    const logits = Tensor.randn([2, 3, 5], { seed: 3 });
    const mask = [1, 0, 1, 1, 1, 0];
    const a = tokenEntropyLoss(logits, mask);
    const b = tokenEntropyLoss(logits, Tensor.from(mask, [2, 3]));
    assertClose([await b.item()], [await a.item()], { atol: 1e-6, rtol: 1e-6 });
    const s = tokenEntropyLoss(logits, Tensor.from(mask, [2, 3]), "sum");
    assertClose([await s.item()], [(await a.item()) * 4 / 2], { atol: 1e-5, rtol: 1e-5 });
    assertThrows(
      () => tokenEntropyLoss(logits, Tensor.from(mask, [6], { dtype: "i32" })),
      Error,
      "an f32 Tensor",
    );
  },
});

Deno.test({
  name:
    "NaN logits give NaN entropy, log-softmax and tokenEntropyLoss (short and long rows), never a finite value",
  ...gpuTest,
  fn: async () => {
    const loss = tokenEntropyLoss(Tensor.from([0, 1, NaN, 0, 1, 2], [1, 2, 3]), [1, 1]);
    assert(Number.isNaN(await loss.item()), "a NaN in one row makes the loss NaN");
    for (const V of [3, 1000]) { // one invocation per row, and one workgroup per row
      const z = new Float32Array(3 * V).map((_, i) => (i % 7) / 3);
      z[1] = NaN; // row 0 has one NaN
      z.fill(NaN, 2 * V, 3 * V); // row 2 is all NaN
      const t = Tensor.from(z, [3, V]);
      const h = await entropy(t).toArray();
      assert(Number.isNaN(h[0]) && Number.isFinite(h[1]) && Number.isNaN(h[2]), `V ${V}: ${h}`);
      const lp = await logSoftmax(t).toArray();
      assert(Number.isNaN(lp[V - 1]) && Number.isFinite(lp[V]), `V ${V}: log-softmax rows`);
    }
  },
});

Deno.test({
  name:
    "backward() twice through one graph throws (PyTorch's rule); gradients accumulate across graphs",
  ...gpuTest,
  fn: async () => {
    const w = Tensor.from([1, 2, 3], [3], { requiresGrad: true });
    const loss = sum(mul(w, w));
    loss.backward();
    assertThrows(() => loss.backward(), Error, "already freed by an earlier backward()");
    sum(mul(w, w)).backward(); // a new graph: accumulates
    assertEquals(Array.from(await w.grad!.toArray()), [4, 8, 12]);
    // an intermediate of a freed graph cannot start another pass either
    const y = mul(w, w);
    sum(y).backward();
    assertThrows(() => sum(mul(y, y)).backward(), Error, "already freed");
  },
});

Deno.test("Tensor.from() refuses values that are not i32 integers for an i32 tensor", () => {
  assertThrows(() => Tensor.from([1, 2.5], [2], { dtype: "i32" }), Error, "value 2.5 at [1]");
  assertThrows(() => Tensor.from([NaN], [1], { dtype: "i32" }), Error, "not an i32 integer");
  assertThrows(() => Tensor.from([2 ** 31], [1], { dtype: "i32" }), Error, "not an i32 integer");
  Tensor.from([-(2 ** 31), 7], [2], { dtype: "i32" }).dispose();
});
