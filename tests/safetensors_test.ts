import { dirSource } from "../engine/model/checkpoint.ts";
import { Checkpoint } from "../engine/model/shards.ts";
import {
  readSafetensors,
  SafetensorsError,
  SafetensorsFile,
  toFloat32,
  toInt32,
  writeSafetensors,
} from "../engine/safetensors.ts";
import { tensorFromRaw, tensorToRaw } from "../engine/tensor_io.ts";
import { bf16ToF32, f32ToBf16 } from "../engine/tensor.ts";
import { assert, assertEquals, assertRejects } from "@std/assert";
import { assertClose, gpuTest } from "./_helpers.ts";

const HF = new URL("./fixtures/hf/", import.meta.url).pathname;

async function tmpDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "st_test_" });
}

Deno.test("writeSafetensors() round-trips every dtype and the metadata", async () => {
  const dir = await tmpDir();
  const path = `${dir}/all.safetensors`;
  const tensors = {
    f32: { dtype: "F32" as const, shape: [2, 3], data: new Float32Array([1, -2, 3.5, 0, 1e-8, 7]) },
    f16: { dtype: "F16" as const, shape: [3], data: new Uint16Array([0x3c00, 0xc000, 0x3555]) },
    bf16: { dtype: "BF16" as const, shape: [2], data: new Uint16Array([0x3f80, 0xc040]) },
    i32: { dtype: "I32" as const, shape: [4], data: new Int32Array([1, -1, 151935, 0]) },
    i64: { dtype: "I64" as const, shape: [2], data: new BigInt64Array([5n, -9n]) },
    f64: { dtype: "F64" as const, shape: [1], data: new Float64Array([Math.PI]) },
    u8: { dtype: "U8" as const, shape: [3], data: new Uint8Array([0, 1, 255]) },
    empty: { dtype: "F32" as const, shape: [0, 4], data: new Float32Array(0) },
  };
  await writeSafetensors(path, tensors, { source: "test" });
  const { tensors: back, metadata } = await readSafetensors(path);
  assertEquals(metadata, { source: "test" });
  assertEquals([...back.keys()].sort(), Object.keys(tensors).sort());
  assertEquals([...toFloat32(back.get("f32")!)], [...new Float32Array([1, -2, 3.5, 0, 1e-8, 7])]);
  assertClose(toFloat32(back.get("f16")!), [1, -2, 0.33325], { atol: 1e-4 });
  assertEquals([...toFloat32(back.get("bf16")!)], [1, -3]);
  assertEquals([...toInt32(back.get("i32")!)], [1, -1, 151935, 0]);
  assertEquals([...toInt32(back.get("i64")!)], [5, -9]);
  assertEquals(toFloat32(back.get("f64")!)[0], Math.fround(Math.PI));
  assertEquals([...back.get("u8")!.data], [0, 1, 255]);
  assertEquals(back.get("empty")!.shape, [0, 4]);
  // the data section starts 8-byte aligned
  const raw = await Deno.readFile(path);
  const headerLen = Number(new DataView(raw.buffer).getBigUint64(0, true));
  assertEquals(headerLen % 8, 0);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("writeSafetensors() leaves no temp file and replaces the target atomically", async () => {
  const dir = await tmpDir();
  const path = `${dir}/w.safetensors`;
  await writeSafetensors(path, { a: { dtype: "F32", shape: [1], data: new Float32Array([1]) } });
  await writeSafetensors(path, { b: { dtype: "F32", shape: [1], data: new Float32Array([2]) } });
  const names = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  assertEquals(names, ["w.safetensors"]);
  assertEquals([...(await readSafetensors(path)).tensors.keys()], ["b"]);
  // a failed write (bad byte size) keeps the old file intact
  await assertRejects(
    () => writeSafetensors(path, { c: { dtype: "F32", shape: [2], data: new Float32Array([1]) } }),
    SafetensorsError,
    'tensor "c"',
  );
  assertEquals([...(await readSafetensors(path)).tensors.keys()], ["b"]);
  await Deno.remove(dir, { recursive: true });
});

/** Builds a file from a header object and a data length, for malformed cases. */
function fileBytes(header: unknown, dataLen: number, headerLenOverride?: number): Uint8Array {
  const json = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const out = new Uint8Array(8 + json.length + dataLen);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLenOverride ?? json.length), true);
  out.set(json, 8);
  return out;
}

const good = { a: { dtype: "F32", shape: [2], data_offsets: [0, 8] } };
const malformed: [string, Uint8Array, string][] = [
  ["truncated file (under 8 bytes)", new Uint8Array(5), "truncated"],
  ["header length past the end", fileBytes(good, 8, 10_000), "runs past the end of the file"],
  ["bad JSON", fileBytes("{not json", 0), "not valid JSON"],
  [
    "unknown dtype",
    fileBytes({ a: { dtype: "Q4", shape: [2], data_offsets: [0, 8] } }, 8),
    "unknown dtype",
  ],
  [
    "offsets out of range",
    fileBytes({ a: { dtype: "F32", shape: [4], data_offsets: [0, 16] } }, 8),
    "past the end",
  ],
  [
    "overlapping tensors",
    fileBytes({
      a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
      b: { dtype: "F32", shape: [2], data_offsets: [4, 12] },
    }, 12),
    "overlap",
  ],
  [
    "shape disagrees with byte size",
    fileBytes({ a: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, 8),
    "needs 12 bytes",
  ],
  ["bad shape", fileBytes({ a: { dtype: "F32", shape: [-2], data_offsets: [0, 8] } }, 8), "shape"],
  ["truncated data", fileBytes(good, 8).slice(0, -3), "past the end"],
];
for (const [what, bytes, message] of malformed) {
  Deno.test(`SafetensorsFile.open() rejects a malformed file: ${what}`, async () => {
    const dir = await tmpDir();
    const path = `${dir}/bad.safetensors`;
    await Deno.writeFile(path, bytes);
    const err = await assertRejects(() => SafetensorsFile.open(path), SafetensorsError, message);
    assert(err.message.includes(path), `message names the file: ${err.message}`);
    await Deno.remove(dir, { recursive: true });
  });
}

Deno.test("SafetensorsFile.open() names a missing file", async () => {
  await assertRejects(
    () => SafetensorsFile.open("/nonexistent/x.safetensors"),
    SafetensorsError,
    "/nonexistent/x.safetensors",
  );
});

Deno.test("Checkpoint reads the HF qwen2-tiny fixture with the right names and shapes", async () => {
  const ckpt = await Checkpoint.open(dirSource(`${HF}qwen2-tiny`));
  assertEquals(ckpt.names.length, 26); // embedding, 2 layers x 12, final norm
  assertEquals(ckpt.entry("model.embed_tokens.weight")?.shape, [512, 64]);
  assertEquals(ckpt.entry("model.layers.1.self_attn.k_proj.weight")?.shape, [32, 64]);
  assertEquals(ckpt.entry("model.layers.0.mlp.down_proj.weight")?.shape, [64, 160]);
  assert(ckpt.entry("lm_head.weight") === undefined, "tied embeddings: no lm_head");
  ckpt.close();
});

Deno.test("the bf16 fixture holds the f32 weights rounded to bf16", async () => {
  const f32 = await Checkpoint.open(dirSource(`${HF}qwen2-tiny`));
  const bf16 = await Checkpoint.open(dirSource(`${HF}qwen2-tiny-bf16`));
  assertEquals(bf16.names.sort(), f32.names.sort());
  for (const name of f32.names) {
    const a = toFloat32(await f32.read(name));
    const b = await bf16.read(name);
    assertEquals(b.dtype, "BF16");
    const rounded = a.map((v) => bf16ToF32(f32ToBf16(v)));
    assertEquals([...toFloat32(b)], [...rounded], name);
  }
  f32.close();
  bf16.close();
});

Deno.test("Checkpoint reads sharded checkpoints through model.safetensors.index.json", async () => {
  const dir = await tmpDir();
  await writeSafetensors(`${dir}/model-00001-of-00002.safetensors`, {
    a: { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) },
  });
  await writeSafetensors(`${dir}/model-00002-of-00002.safetensors`, {
    b: { dtype: "BF16", shape: [1], data: new Uint16Array([0x4000]) },
  });
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({
      weight_map: { a: "model-00001-of-00002.safetensors", b: "model-00002-of-00002.safetensors" },
    }),
  );
  const ckpt = await Checkpoint.open(dirSource(dir));
  assertEquals(ckpt.names.sort(), ["a", "b"]);
  assertEquals([...toFloat32(await ckpt.read("b"))], [2]);
  ckpt.close();
  // an index that points a tensor at the wrong shard is refused
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({
      weight_map: { a: "model-00002-of-00002.safetensors", b: "model-00002-of-00002.safetensors" },
    }),
  );
  await assertRejects(() => Checkpoint.open(dirSource(dir)), SafetensorsError, '"a"');
  await Deno.remove(dir, { recursive: true });
});

Deno.test({
  name: "tensorFromRaw() keeps bf16 on the GPU and tensorToRaw() reads it back bit-exact",
  ...gpuTest,
  fn: async () => {
    const ckpt = await Checkpoint.open(dirSource(`${HF}qwen2-tiny-bf16`));
    const raw = await ckpt.read("model.layers.0.self_attn.q_proj.bias");
    const t = tensorFromRaw(raw);
    assertEquals(t.dtype, "bf16");
    const back = await tensorToRaw(t);
    assertEquals([...back.data], [...raw.data]);
    assertEquals([...(await t.toArray())], [...toFloat32(raw)]);
    t.dispose();
    ckpt.close();
  },
});

Deno.test("safetensors: a directory, an index pointing outside, failed writes and non-ASCII metadata", async () => {
  const dir = await Deno.makeTempDir({ prefix: "st_bad_" });
  await assertRejects(() => readSafetensors(dir), Error, `${dir}: is a directory`);
  await Deno.copyFile(`${HF}qwen2-tiny/model.safetensors`, `${dir}/model.safetensors`);
  for (const evil of ["../../etc/passwd", "/etc/passwd", "a/../../x.safetensors"]) {
    await Deno.writeTextFile(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({ weight_map: { "model.norm.weight": evil } }),
    );
    await assertRejects(
      () => Checkpoint.open(dirSource(dir)),
      Error,
      "outside the checkpoint directory",
    );
  }
  // a write that fails (the target is a directory) leaves no temp file behind
  await Deno.mkdir(`${dir}/taken.safetensors`);
  const t = { x: { dtype: "F32" as const, shape: [1], data: new Float32Array([1]) } };
  await assertRejects(() => writeSafetensors(`${dir}/taken.safetensors`, t), Error, "cannot write");
  const names = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  assert(!names.some((n) => n.includes(".tmp-")), `no temp file: ${names}`);
  // the header is padded in bytes, so the data starts 8-byte aligned even with UTF-8 metadata
  const path = `${dir}/meta.safetensors`;
  await writeSafetensors(path, t, { note: "entropie é → 熵" });
  const bytes = await Deno.readFile(path);
  const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assertEquals((8 + headerLength) % 8, 0);
  const f = await SafetensorsFile.open(path);
  assertEquals(f.metadata.note, "entropie é → 熵");
  assertEquals(new Float32Array((await f.read("x")).data.slice().buffer)[0], 1);
  f.close();
  await Deno.remove(dir, { recursive: true });
});
