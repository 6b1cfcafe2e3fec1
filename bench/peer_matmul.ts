/**
 * Side by side, in one process on the same adapter: our matmul against
 * tfjs-webgpu 4.22 (a peer that runs in Deno). Prints GFLOP/s and the ratio.
 *
 *   deno task bench:peer
 *
 * Each measurement queues `reps` products and reads the last one back, for
 * both engines, so each pays the same single readback.
 */
// Peer-only packages: inline specifiers keep them out of the main job's dependency set (the
// import map and the lockfile), so `deno task train` on a fresh clone never downloads them.
// deno-lint-ignore no-import-prefix
import * as tf from "npm:@tensorflow/tfjs-core@4.22.0";
// deno-lint-ignore no-import-prefix
import "npm:@tensorflow/tfjs-backend-webgpu@4.22.0";
import { initDevice } from "../engine/device.ts";
import { matmul } from "../engine/ops/matmul.ts";
import { Tensor } from "../engine/tensor.ts";

const dev = await initDevice();
await tf.setBackend("webgpu");
await tf.ready();

const shapes: [string, number, number, number, number][] = [
  ["256^3", 256, 256, 256, 8],
  ["512^3", 512, 512, 512, 3],
  ["1024^3", 1024, 1024, 1024, 1],
  ["(512x896)·(896x4864)", 512, 896, 4864, 1],
];

async function best(runs: number, fn: () => Promise<void>): Promise<number> {
  await fn(); // warm-up: compile pipelines
  let b = Infinity;
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    b = Math.min(b, performance.now() - t0);
  }
  return b / 1000;
}

console.log(`adapter: ${dev.info.description}`);
console.log("shape                      ours GFLOP/s   tfjs GFLOP/s   ours/tfjs");
for (const [name, M, K, N, reps] of shapes) {
  const flops = 2 * M * N * K * reps;
  const a = Tensor.randn([M, K], { seed: 1 });
  const b = Tensor.randn([K, N], { seed: 2 });
  const ours = await best(3, async () => {
    let last: Tensor | null = null;
    for (let i = 0; i < reps; i++) {
      last?.dispose();
      last = matmul(a, b);
    }
    await last!.toArray();
    last!.dispose();
  });
  const ta = tf.randomNormal([M, K]);
  const tb = tf.randomNormal([K, N]);
  const theirs = await best(3, async () => {
    let last: tf.Tensor | null = null;
    for (let i = 0; i < reps; i++) {
      last?.dispose();
      last = tf.matMul(ta, tb);
    }
    await last!.data();
    last!.dispose();
  });
  const g1 = flops / ours / 1e9;
  const g2 = flops / theirs / 1e9;
  console.log(
    `${name.padEnd(26)} ${g1.toFixed(2).padStart(12)} ${g2.toFixed(2).padStart(14)} ${
      (g1 / g2).toFixed(2).padStart(11)
    }x`,
  );
  a.dispose();
  b.dispose();
  ta.dispose();
  tb.dispose();
}
