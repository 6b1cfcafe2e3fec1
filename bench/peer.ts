/**
 * Side by side, in one process on the same adapter: our engine against two JS
 * peers that run WebGPU in Deno, tfjs-webgpu 4.22 and jax-js 0.1.25. For each
 * row: R independent ops on real data (jax-js's np.ones is a lazy constant its
 * fused kernels never load, so every input is np.array(Float32Array)), then
 * every result read back at once; best of 3. Prints each engine's rate, our
 * ratio to the faster peer, and a streaming probe's GB/s as the adapter's
 * bandwidth ceiling; rows bound by bandwidth (the one-row products, softmax,
 * add) also print the bytes we stream per second against it.
 *
 *   deno task bench:peer
 */
// Peer-only packages: inline specifiers keep them out of the main job's dependency set (the
// import map and the lockfile), so `deno task train` on a fresh clone never downloads them.
// deno-lint-ignore no-import-prefix
import * as tf from "npm:@tensorflow/tfjs-core@4.22.0";
// deno-lint-ignore no-import-prefix
import "npm:@tensorflow/tfjs-backend-webgpu@4.22.0";
// deno-lint-ignore no-import-prefix
import * as jax from "npm:@jax-js/jax@0.1.25";
import { declareKernel } from "../kernels/declare.ts";
import { initDevice } from "../engine/device.ts";
import { launch } from "../engine/launch.ts";
import { add, matmul, softmax } from "../engine/ops/mod.ts";
import { Tensor } from "../engine/tensor.ts";

const dev = await initDevice();
await tf.setBackend("webgpu");
await tf.ready();
const jaxDevices = await jax.init("webgpu");
if (!jaxDevices.includes("webgpu")) throw new Error("jax-js found no WebGPU device");
jax.defaultDevice("webgpu");
const np = jax.numpy;

/** Best of 3 (after a warm-up) of `fn`, which queues work and awaits every result. */
async function best(fn: () => Promise<void>): Promise<number> {
  await fn();
  let b = Infinity;
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    await fn();
    b = Math.min(b, performance.now() - t0);
  }
  return b / 1000;
}

function data(n: number, seed: number): Float32Array<ArrayBuffer> {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  });
}

interface Row {
  name: string;
  unit: "GFLOP/s" | "GB/s";
  work: number; // per op: FLOPs or bytes
  /** Bytes one op must stream, where the row is bound by the adapter's bandwidth. */
  bytes?: number;
  reps: number;
  ours: () => Promise<void>;
  tfjs: () => Promise<void>;
  jax: () => Promise<void>;
}

/** A (M, K) · (N, K)ᵀ product: a linear layer's weight as stored, the decode layout. */
function matmulRow(name: string, M: number, K: number, N: number, reps: number): Row {
  const a = data(M * K, 1);
  const b = data(N * K, 2);
  const oa = Tensor.from(a, [M, K]);
  const ob = Tensor.from(b, [N, K]);
  const ta = tf.tensor(a, [M, K]);
  const tb = tf.tensor(b, [N, K]);
  const ja = np.array(a).reshape([M, K]);
  const jb = np.array(b).reshape([N, K]);
  return {
    name,
    unit: "GFLOP/s",
    work: 2 * M * N * K,
    bytes: M === 1 ? 4 * N * K : undefined, // one row: every weight read once, nothing reused
    reps,
    ours: async () => {
      const outs = Array.from({ length: reps }, () => matmul(oa, ob, { transB: true }));
      await Promise.all(outs.map((t) => t.toArray()));
      outs.forEach((t) => t.dispose());
    },
    tfjs: async () => {
      const outs = Array.from({ length: reps }, () => tf.matMul(ta, tb, false, true));
      await Promise.all(outs.map((t) => t.data()));
      outs.forEach((t) => t.dispose());
    },
    jax: async () => {
      const outs = Array.from({ length: reps }, () => np.matmul(ja.ref, jb.ref.transpose()));
      await Promise.all(outs.map((t) => t.data()));
    },
  };
}

function softmaxRow(rows: number, V: number, reps: number): Row {
  const z = data(rows * V, 3);
  const oz = Tensor.from(z, [rows, V]);
  const tz = tf.tensor(z, [rows, V]);
  const jz = np.array(z).reshape([rows, V]);
  return {
    name: `softmax ${rows}x${V}`,
    unit: "GB/s",
    work: 2 * 4 * rows * V,
    reps,
    ours: async () => {
      const outs = Array.from({ length: reps }, () => softmax(oz));
      await Promise.all(outs.map((t) => t.toArray()));
      outs.forEach((t) => t.dispose());
    },
    tfjs: async () => {
      const outs = Array.from({ length: reps }, () => tf.softmax(tz));
      await Promise.all(outs.map((t) => t.data()));
      outs.forEach((t) => t.dispose());
    },
    jax: async () => {
      const outs = Array.from({ length: reps }, () => jax.nn.softmax(jz.ref, -1));
      await Promise.all(outs.map((t) => t.data()));
    },
  };
}

function addRow(n: number, reps: number): Row {
  const x = data(n, 4);
  const y = data(n, 5);
  const [ox, oy] = [Tensor.from(x), Tensor.from(y)];
  const [tx, ty] = [tf.tensor(x), tf.tensor(y)];
  const [jx, jy] = [np.array(x), np.array(y)];
  return {
    name: `add ${n / 2 ** 20}M`,
    unit: "GB/s",
    work: 3 * 4 * n,
    reps,
    ours: async () => {
      const outs = Array.from({ length: reps }, () => add(ox, oy));
      await Promise.all(outs.map((t) => t.toArray()));
      outs.forEach((t) => t.dispose());
    },
    tfjs: async () => {
      const outs = Array.from({ length: reps }, () => tf.add(tx, ty));
      await Promise.all(outs.map((t) => t.data()));
      outs.forEach((t) => t.dispose());
    },
    jax: async () => {
      const outs = Array.from({ length: reps }, () => jx.ref.add(jy.ref));
      await Promise.all(outs.map((t) => t.data()));
    },
  };
}

/** The adapter's streaming rate: out = a + b as vec4, 16 floats per invocation. */
const streamProbe = declareKernel({
  label: "stream_probe",
  inputs: { a: "vec4<f32>", b: "vec4<f32>" },
  outputs: { out: "vec4<f32>" },
  params: { n4: "u32" },
  grid: "elements",
  workgroupSize: [64],
  main: `
  let i = flat_index(gid, nwg) * 4u;
  for (var j = i; j < min(i + 4u, params.n4); j++) { out[j] = a[j] + b[j]; }`,
});

async function probe(n: number, reps: number): Promise<number> {
  const [a, b] = [Tensor.from(data(n, 6)), Tensor.from(data(n, 7))];
  const s = await best(async () => {
    const outs = Array.from({ length: reps }, () => {
      const out = Tensor.empty([n]);
      launch(streamProbe, { a, b, out }, { n4: n / 4 }, n / 16);
      return out;
    });
    await dev.sync();
    outs.forEach((t) => t.dispose());
  });
  return (3 * 4 * n * reps) / s / 1e9;
}

const rows: Row[] = [
  matmulRow("matmul 1024^3", 1024, 1024, 1024, 2),
  matmulRow("matmul 512x896x4864", 512, 896, 4864, 1),
  // decode rows: enough ops that the readback's fixed ~11 ms wait is amortised for every engine
  matmulRow("matmul 1x896x4864 (decode)", 1, 896, 4864, 64),
  matmulRow("matmul 16x896x4864", 16, 896, 4864, 8),
  matmulRow("matmul 1x896x32768 (decode, head-sized)", 1, 896, 32768, 16),
  softmaxRow(64, 151936, 2),
  addRow(16 * 2 ** 20, 2),
];

console.log(`adapter: ${dev.info.description}`);
const ceiling = await probe(16 * 2 ** 20, 4);
console.log(`streaming probe (vec4 add, 16 floats per invocation): ${ceiling.toFixed(2)} GB/s\n`);
console.log("| work | ours | tfjs | jax-js | unit | ours / faster peer |");
console.log("| --- | --- | --- | --- | --- | --- |");
for (const r of rows) {
  const rate = (s: number) => (r.work * r.reps) / s / 1e9;
  const [o, t, j] = [rate(await best(r.ours)), rate(await best(r.tfjs)), rate(await best(r.jax))];
  // bandwidth-bound rows: the bytes they stream per second against the probe's
  const streamed = r.unit === "GB/s" ? o : r.bytes ? (o * r.bytes) / r.work : 0;
  const vsCeiling = streamed
    ? ` (${streamed.toFixed(2)} GB/s, ${((100 * streamed) / ceiling).toFixed(0)}% of the probe)`
    : "";
  console.log(
    `| ${r.name} | ${o.toFixed(2)} | ${t.toFixed(2)} | ${j.toFixed(2)} | ${r.unit} | ${
      (o / Math.max(t, j)).toFixed(2)
    }x${vsCeiling} |`,
  );
}
