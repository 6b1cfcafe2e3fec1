/** Shared test helpers: the device, random inputs, closeness checks, finite differences. */
import { initDevice } from "../engine/device.ts";
import type { NDArray } from "../engine/ops/_reference.ts";
import { Rng } from "../engine/random.ts";
import { numel, Tensor } from "../engine/tensor.ts";
import { AssertionError } from "@std/assert";

export const dev = await initDevice();

/** GPU tests await mapAsync, which Deno's op sanitizer would flag. */
export const gpuTest = { sanitizeOps: false, sanitizeResources: false } as const;

export function randArray(
  shape: number[],
  seed: number,
  kind: "normal" | "positive" = "normal",
): NDArray {
  const rng = new Rng(seed);
  const data = new Float64Array(numel(shape));
  for (let i = 0; i < data.length; i++) {
    // f32-representable values so the GPU and the reference see the same input
    const v = kind === "positive" ? 0.5 + 1.5 * rng.next() : rng.normal();
    data[i] = Math.fround(v);
  }
  return { shape, data };
}

export function toTensor(x: NDArray, requiresGrad = false): Tensor {
  return Tensor.from(x.data, x.shape, { requiresGrad });
}

/** |a - e| <= atol + rtol |e| elementwise; the message names the first failure. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  { atol = 1e-5, rtol = 1e-4 } = {},
  what = "values",
): void {
  if (actual.length !== expected.length) {
    throw new AssertionError(`${what}: length ${actual.length} != ${expected.length}`);
  }
  let worst = -1;
  let worstErr = 0;
  for (let i = 0; i < actual.length; i++) {
    const err = Math.abs(actual[i] - expected[i]) - (atol + rtol * Math.abs(expected[i]));
    if (!(err <= 0) && (worst < 0 || !(err <= worstErr))) {
      worst = i;
      worstErr = err;
    }
  }
  if (worst >= 0) {
    throw new AssertionError(
      `${what}: at [${worst}] got ${actual[worst]}, expected ${
        expected[worst]
      } (atol ${atol}, rtol ${rtol})`,
    );
  }
}

/**
 * Central differences in float64 of L(x) = sum(f(x) * w) with respect to
 * input k (only at `indices` when given).
 */
export function finiteDiff(
  f: (xs: NDArray[]) => NDArray,
  xs: NDArray[],
  w: Float64Array,
  k: number,
  eps = 1e-4,
  indices?: number[],
): Float64Array {
  const loss = () => {
    const y = f(xs);
    let s = 0;
    for (let i = 0; i < y.data.length; i++) s += y.data[i] * w[i];
    return s;
  };
  const x = xs[k].data;
  const grad = new Float64Array(x.length);
  for (const i of indices ?? x.keys()) {
    const old = x[i];
    x[i] = old + eps;
    const up = loss();
    x[i] = old - eps;
    const down = loss();
    x[i] = old;
    grad[i] = (up - down) / (2 * eps);
  }
  return grad;
}

const HF = new URL("./fixtures/hf/", import.meta.url).pathname;

/** A temp model directory: qwen2-tiny weights (vocab 512) with the demo's char tokenizer. */
export async function tinyModelWithTokenizer(prefix = "tiny_"): Promise<string> {
  const { demoTokenizerJson } = await import("../demo/init.ts");
  const { DEMO_EOS } = await import("../demo/task.ts");
  const dir = await Deno.makeTempDir({ prefix });
  for (const f of ["config.json", "model.safetensors"]) {
    await Deno.copyFile(`${HF}qwen2-tiny/${f}`, `${dir}/${f}`);
  }
  await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(demoTokenizerJson()));
  await Deno.writeTextFile(
    `${dir}/tokenizer_config.json`,
    JSON.stringify({ eos_token: "<|endoftext|>" }),
  );
  await Deno.writeTextFile(
    `${dir}/generation_config.json`,
    JSON.stringify({ eos_token_id: DEMO_EOS }),
  );
  return dir;
}

/**
 * The prompts and responses of a fixture's expected.safetensors (two rows, row 1
 * left-padded), as the trainer would get them, and the fixture's tensors.
 */
export async function fixturePromptsAndResponses(name: string) {
  const { readSafetensors, toInt32 } = await import("../engine/safetensors.ts");
  const { tensors, metadata } = await readSafetensors(`${HF}${name}/expected.safetensors`);
  const ids = toInt32(tensors.get("input_ids")!);
  const mask = toInt32(tensors.get("attention_mask")!);
  const P = Number(metadata.prompt_len);
  const T = 12;
  const prompts = [0, 1].map((b) =>
    Array.from(ids.slice(b * T, b * T + P)).filter((_, j) => mask[b * T + j])
  );
  const responses = [0, 1].map((b) => Array.from(ids.slice(b * T + P, (b + 1) * T)));
  return { prompts, responses, ids, mask, tensors };
}

/** Every weight of a model, flattened (to compare runs bit for bit). */
export async function weights(model: { tensors(): Tensor[] }): Promise<number[]> {
  const out: number[] = [];
  for (const t of model.tensors()) out.push(...await t.toArray());
  return out;
}
