/**
 * Fused attention against the composed one (matmul, scale, mask, softmax,
 * matmul), side by side in one run on one adapter, on the Qwen2.5-0.5B
 * attention shape (14 query heads, 2 KV heads, head_dim 64):
 * - training, forward + backward at T = 512 and 2048: ms and peak pool bytes
 *   of attention alone, and its share of one decoder layer's step;
 * - decoding, one query row against a cache: ms per call.
 *
 *   deno task bench:attention [--layer]
 *
 * --layer also times one whole decoder layer of that shape (forward +
 * backward, f32, fused attention) to give attention's share of a layer's
 * step; the composed share puts the composed attention time in place of the
 * fused one. About 3 minutes more on a 2-core CPU adapter.
 */
import { parseArgs } from "@std/cli";
import { device, initDevice } from "../engine/device.ts";
import { randomModel } from "../engine/model/init.ts";
import { parseQwenConfig } from "../engine/model/qwen.ts";
import { attentionBias, composedAttention } from "../engine/nn.ts";
import { attention, mean, randomNormal, sum } from "../engine/ops/mod.ts";
import { noGrad, tidy } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { QWEN25_05B } from "./_qwen05b.ts";

const flags = parseArgs(Deno.args, { boolean: ["layer"] });

const dev = await initDevice();
console.log(`adapter: ${dev.info.description}`);
const [H, Hkv, D] = [14, 2, 64];
const scale = 1 / Math.sqrt(D);
const MiB = (b: number) => (b / 2 ** 20).toFixed(1);

/** Best wall time of `runs` calls of `body` (each ends with the GPU idle) and the peak pool bytes. */
async function time(body: () => Promise<void>, runs = 2) {
  await body(); // compile
  let best = Infinity;
  let peak = 0;
  for (let i = 0; i < runs; i++) {
    const base = device().liveBytes;
    device().resetPeak();
    const t0 = performance.now();
    await body();
    best = Math.min(best, performance.now() - t0);
    peak = Math.max(peak, device().peakLiveBytes - base);
  }
  return { ms: best, peak };
}

/** Forward and backward of attention over (B, H, T, D) with a loss of sum(o). */
function trainStep(fused: boolean, B: number, T: number) {
  return async () => {
    const q = randomNormal([B, H, T, D], { seed: 1 });
    const k = randomNormal([B, Hkv, T, D], { seed: 2 });
    const v = randomNormal([B, Hkv, T, D], { seed: 3 });
    [q, k, v].forEach((x) => x.requiresGrad = true);
    const mask = new Array(B * T).fill(1);
    const grads = tidy(() => {
      const o = fused
        ? attention(q, k, v, { scale, keyMask: Tensor.from(mask, [B, T]) })
        : composedAttention(q, k, v, attentionBias(mask, B, T, T), scale);
      sum(o).backward();
      return [q.grad!, k.grad!, v.grad!];
    });
    await mean(grads[0]).item();
    [q, k, v, ...grads].forEach((x) => x.dispose());
  };
}

/** One Qwen2.5-0.5B-shaped decoder layer (f32, a 64-token vocabulary): forward + backward of sum(hidden). */
async function layerStep(T: number) {
  const config = parseQwenConfig(
    { ...QWEN25_05B, num_hidden_layers: 1, vocab_size: 64, torch_dtype: "float32" },
    "bench layer",
  );
  const model = randomModel(config, { trainable: true });
  const ids = Tensor.from(Array.from({ length: T }, (_, i) => i % 64), [1, T], { dtype: "i32" });
  const step = async () => {
    const loss = tidy(() => {
      const l = sum(model.hidden(ids));
      l.backward();
      return l;
    });
    await loss.item();
    loss.dispose();
    model.tensors().forEach((t) => (t.grad?.dispose(), t.grad = null));
  };
  const r = await time(step, 1);
  ids.dispose();
  model.dispose();
  return r;
}

const rows: string[] = [];
const shares: string[] = [];
const limit = dev.info.maxStorageBufferBindingSize;
for (const T of [512, 2048]) {
  const B = 1;
  const fused = await time(trainStep(true, B, T));
  const scores = 4 * B * H * T * T;
  const composed = scores > limit ? null : await time(trainStep(false, B, T));
  rows.push(
    `| train fwd+bwd | ${B}×${T} | ${fused.ms.toFixed(0)} | ${MiB(fused.peak)} | ${
      composed ? composed.ms.toFixed(0) : "—"
    } | ${composed ? MiB(composed.peak) : `(B,H,T,T) scores ${MiB(scores)} MiB > binding limit`} |`,
  );
  console.log(rows.at(-1));
  if (flags.layer) {
    const layer = await layerStep(T);
    const rest = layer.ms - fused.ms;
    shares.push(
      `| ${B}×${T} | ${(layer.ms / 1000).toFixed(1)} | ${
        (100 * fused.ms / layer.ms).toFixed(0)
      }% | ${
        composed
          ? `${(100 * composed.ms / (rest + composed.ms)).toFixed(0)}%`
          : "does not fit a binding"
      } | ${MiB(layer.peak)} |`,
    );
    console.log(shares.at(-1));
  }
}

for (const [B, S] of [[1, 64], [1, 1024], [64, 40], [256, 40]]) {
  const q = randomNormal([B, H, 1, D], { seed: 4 });
  const keys = randomNormal([B, Hkv, S, D], { seed: 5 });
  const values = randomNormal([B, Hkv, S, D], { seed: 6 });
  const keyMask = Tensor.full([B, S], 1);
  const bias = attentionBias(new Array(B * S).fill(1), B, 1, S);
  const n = 20;
  const calls = (fused: boolean) => async () => {
    noGrad(() => {
      for (let i = 0; i < n; i++) {
        tidy(() =>
          fused
            ? attention(q, keys, values, { scale, keyMask })
            : composedAttention(q, keys, values, bias, scale)
        );
      }
    });
    await dev.sync();
  };
  const fused = await time(calls(true));
  const composed = await time(calls(false));
  rows.push(
    `| decode, cache ${S} | ${B}×1 | ${(fused.ms / n).toFixed(2)} | | ${
      (composed.ms / n).toFixed(2)
    } | |`,
  );
  console.log(rows.at(-1));
  [q, keys, values, keyMask, bias].forEach((x) => x.dispose());
}
console.log(
  "\n| work | B×T | fused ms | fused peak MiB | composed ms | composed peak MiB |\n| --- | --- | --- | --- | --- | --- |\n" +
    rows.join("\n"),
);
if (shares.length) {
  console.log(
    "\n| one decoder layer, fwd+bwd | layer s | fused attention share | composed attention share | layer peak MiB |\n| --- | --- | --- | --- | --- |\n" +
      shares.join("\n"),
  );
}
