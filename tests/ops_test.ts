/**
 * Table-driven op tests: each case runs the GPU forward against the CPU
 * reference, and the GPU backward against central finite differences of the
 * reference in float64, on odd shapes (1, 3, 17, 130) and aligned ones.
 */
import * as ops from "../engine/ops/mod.ts";
import { elementwiseReference as ew } from "../engine/ops/elementwise.ts";
import { reduceReference as red } from "../engine/ops/reduce.ts";
import { matmulReference } from "../engine/ops/matmul.ts";
import { softmaxReference as sm } from "../engine/ops/softmax.ts";
import { shapeReference as shp } from "../engine/ops/shape.ts";
import { embeddingReference } from "../engine/ops/embedding.ts";
import { normReference } from "../engine/ops/norm.ts";
import { mapN, type NDArray } from "../engine/ops/_reference.ts";
import { tidy } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { assertClose, finiteDiff, gpuTest, randArray, toTensor } from "./_helpers.ts";
import { assertEquals } from "@std/assert";

interface Input {
  shape: number[];
  kind?: "normal" | "positive";
  /** false for inputs with no gradient (masks). */
  grad?: boolean;
}

interface OpCase {
  name: string;
  inputs: Input[];
  gpu: (xs: Tensor[]) => Tensor;
  ref: (xs: NDArray[]) => NDArray;
  /** Check the backward at these many random coordinates only (large inputs). */
  fdSamples?: number;
}

const U = (shape: number[], kind?: "normal" | "positive"): Input => ({ shape, kind });

const cases: OpCase[] = [];

// unary ops over odd and aligned shapes
const unaryShapes = [[1], [3, 17], [130], [4, 64]];
for (const op of Object.keys(ops.unaryOps) as ops.UnaryOp[]) {
  const kind = ["log", "sqrt", "rsqrt"].includes(op) ? "positive" : "normal";
  for (const shape of unaryShapes) {
    cases.push({
      name: `${op}() [${shape}]`,
      inputs: [U(shape, kind)],
      gpu: ([x]) => (ops as unknown as Record<string, (t: Tensor) => Tensor>)[op](x),
      ref: ([x]) => ew.unary(op, x),
    });
  }
}

const scalarCases: [ops.ScalarOp, number, "normal" | "positive"][] = [
  ["addScalar", 2.5, "normal"],
  ["mulScalar", -1.5, "normal"],
  ["rsubScalar", 1, "normal"],
  ["powScalar", 1.5, "positive"],
  ["powScalar", 3, "normal"],
  ["minScalar", 0.3, "normal"],
  ["maxScalar", -0.2, "normal"],
];
for (const [op, s, kind] of scalarCases) {
  cases.push({
    name: `${op}(x, ${s}) [3, 17]`,
    inputs: [U([3, 17], kind)],
    gpu: ([x]) => (ops as unknown as Record<string, (t: Tensor, s: number) => Tensor>)[op](x, s),
    ref: ([x]) => ew.scalar(op, x, s),
  });
}

// binary ops with broadcasting
const binaryShapes: [number[], number[]][] = [
  [[3, 17], [3, 17]],
  [[3, 17], [17]],
  [[17, 1], [1, 3]],
  [[2, 3, 17], [3, 1]],
  [[130], [1]],
  [[1], [1]],
];
for (const op of Object.keys(ops.binaryOps) as ops.BinaryOp[]) {
  for (const [a, b] of binaryShapes) {
    cases.push({
      name: `${op}() [${a}] with [${b}]`,
      inputs: [U(a), U(b, op === "div" ? "positive" : "normal")],
      gpu: ([x, y]) =>
        (ops as unknown as Record<string, (a: Tensor, b: Tensor) => Tensor>)[op](x, y),
      ref: ([x, y]) => ew.binary(op, x, y),
    });
  }
}

cases.push({
  name: "where() [3, 17] with mask [17]",
  inputs: [{ shape: [17], grad: false }, U([3, 17]), U([3, 1])],
  gpu: ([c, a, b]) => ops.where(ops.maxScalar(c, 0), a, b),
  ref: ([c, a, b]) => ew.where(mapN([c], (v) => Math.max(v, 0)), a, b),
});

// reductions
for (
  const [shape, axis, keepdim] of [
    [[3, 17], 0, false],
    [[3, 17], 1, true],
    [[2, 3, 130], 1, false],
    [[2, 3, 130], -1, true],
    [[1], 0, false],
  ] as [number[], number, boolean][]
) {
  const ax = axis < 0 ? axis + shape.length : axis;
  cases.push({
    name: `sum() [${shape}] axis ${axis}`,
    inputs: [U(shape)],
    gpu: ([x]) => ops.sum(x, { axis, keepdim }),
    ref: ([x]) => red.sum(x, ax, keepdim),
  });
  cases.push({
    name: `mean() [${shape}] axis ${axis}`,
    inputs: [U(shape)],
    gpu: ([x]) => ops.mean(x, { axis, keepdim }),
    ref: ([x]) => red.mean(x, ax, keepdim),
  });
  cases.push({
    name: `max() [${shape}] axis ${axis}`,
    inputs: [U(shape)],
    gpu: ([x]) => ops.max(x, { axis, keepdim }),
    ref: ([x]) => red.max(x, ax, keepdim),
  });
}
cases.push({
  name: "sum() of all elements [17, 130]",
  inputs: [U([17, 130])],
  gpu: ([x]) => ops.sum(x),
  ref: ([x]) => red.sum({ shape: [x.data.length], data: x.data }, 0),
  fdSamples: 40,
});

// matmul: odd and aligned sizes, batched, transposed, shared right operand
const matmulCases: [number[], number[], ops.MatmulOptions][] = [
  [[1, 1], [1, 1], {}],
  [[17, 3], [3, 130], {}],
  [[3, 17], [17, 5], {}],
  [[32, 64], [64, 32], {}],
  [[2, 17, 5], [2, 5, 3], {}],
  [[5, 17], [5, 3], { transA: true }],
  [[17, 5], [3, 5], { transB: true }],
  [[5, 17], [12, 5], { transA: true, transB: true }],
  [[2, 3, 5], [5, 4], {}],
  [[2, 3, 5], [4, 5], { transB: true }],
  [[2, 5, 3], [5, 4], { transA: true }],
  [[2, 5, 3], [4, 5], { transA: true, transB: true }],
  // the vec4 8x8 path (contiguous axes and K multiples of 4), odd M/N at the edges
  [[17, 12], [12, 20], {}],
  [[12, 20], [12, 68], { transA: true }],
  [[17, 12], [13, 12], { transB: true }],
  [[12, 20], [13, 12], { transA: true, transB: true }],
  [[67, 132], [132, 72], {}],
  [[2, 17, 8], [2, 8, 12], {}],
  [[3, 5, 8], [8, 12], {}],
  [[3, 5, 8], [9, 8], { transB: true }],
];
for (const [a, b, o] of matmulCases) {
  cases.push({
    name: `matmul() [${a}]${o.transA ? "ᵀ" : ""} · [${b}]${o.transB ? "ᵀ" : ""}`,
    inputs: [U(a), U(b)],
    gpu: ([x, y]) => ops.matmul(x, y, o),
    ref: ([x, y]) => matmulReference(x, y, o),
    // finite differences at sampled coordinates for the large case
    fdSamples: a.reduce((p, d) => p * d, 1) > 2000 ? 60 : undefined,
  });
}

// row ops
for (const shape of [[3, 17], [1, 130], [2, 3, 5], [4, 1]]) {
  cases.push({
    name: `softmax() [${shape}]`,
    inputs: [U(shape)],
    gpu: ([x]) => ops.softmax(x),
    ref: ([x]) => sm.softmax(x),
  });
  cases.push({
    name: `logSoftmax() [${shape}]`,
    inputs: [U(shape)],
    gpu: ([x]) => ops.logSoftmax(x),
    ref: ([x]) => sm.logSoftmax(x),
  });
  cases.push({
    name: `entropy() [${shape}]`,
    inputs: [U(shape)],
    gpu: ([x]) => ops.entropy(x),
    ref: ([x]) => sm.entropy(x),
  });
}
// rows wider than SHORT_ROW take the one-workgroup-per-row kernels (rows written as vec4s when
// the width is a multiple of 4)
for (const op of ["softmax", "logSoftmax", "entropy"] as const) {
  for (const shape of [[3, 700], [2, 701]]) {
    cases.push({
      name: `${op}() [${shape}] (workgroup per row)`,
      inputs: [U(shape)],
      gpu: ([x]) => ops[op](x),
      ref: ([x]) => sm[op](x),
      fdSamples: 40,
    });
  }
}
cases.push({
  name: "tokenLogProb() [2, 700] (workgroup per row)",
  inputs: [U([2, 700])],
  gpu: ([x]) => ops.tokenLogProb(x, Tensor.from([699, 3], [2], { dtype: "i32" })),
  ref: ([x]) => sm.tokenLogProb(x, [699, 3]),
  fdSamples: 40,
});
{
  const ids = [4, 0, 129, 77, 16];
  cases.push({
    name: "tokenLogProb() [5, 130]",
    inputs: [U([5, 130])],
    gpu: ([x]) => {
      const t = Tensor.from(ids, [5], { dtype: "i32" });
      return ops.tokenLogProb(x, t);
    },
    ref: ([x]) => sm.tokenLogProb(x, ids),
  });
}

// shape ops
cases.push({
  name: "reshape() [3, 17] to [17, 3]",
  inputs: [U([3, 17])],
  gpu: ([x]) => ops.mul(ops.reshape(x, [17, -1]), ops.reshape(x, [17, 3])),
  ref: ([x]) => mapN([{ shape: [17, 3], data: x.data }], (v) => v * v),
});
cases.push({
  name: "permute() [2, 3, 5] by [2, 0, 1]",
  inputs: [U([2, 3, 5])],
  gpu: ([x]) => ops.permute(x, [2, 0, 1]),
  ref: ([x]) => shp.permute(x, [2, 0, 1]),
});
cases.push({
  // only size-1 axes move: a view, no copy
  name: "permute() [2, 1, 3, 4] by [0, 2, 1, 3]",
  inputs: [U([2, 1, 3, 4])],
  gpu: ([x]) => ops.permute(x, [0, 2, 1, 3]),
  ref: ([x]) => shp.permute(x, [0, 2, 1, 3]),
});
cases.push({
  name: "transpose() [17, 3]",
  inputs: [U([17, 3])],
  gpu: ([x]) => ops.transpose(x),
  ref: ([x]) => shp.permute(x, [1, 0]),
});
cases.push({
  name: "slice() [3, 17] axis 1 [2, 9)",
  inputs: [U([3, 17])],
  gpu: ([x]) => ops.slice(x, 1, 2, 9),
  ref: ([x]) => shp.slice(x, 1, 2, 9),
});
cases.push({
  name: "concat() [2, 3] [2, 5] [2, 1] axis 1",
  inputs: [U([2, 3]), U([2, 5]), U([2, 1])],
  gpu: (xs) => ops.concat(xs, 1),
  ref: (xs) => shp.concat(xs, 1),
});
cases.push({
  name: "concat() [1, 4] [3, 4] axis 0",
  inputs: [U([1, 4]), U([3, 4])],
  gpu: (xs) => ops.concat(xs, 0),
  ref: (xs) => shp.concat(xs, 0),
});
cases.push({
  name: "broadcastTo() [3, 1] to [2, 3, 17]",
  inputs: [U([3, 1])],
  gpu: ([x]) => ops.broadcastTo(x, [2, 3, 17]),
  ref: ([x]) => mapN([x, { shape: [2, 3, 17], data: new Float64Array(102) }], (a) => a),
});
{
  const ids = [3, 0, 16, 3, 7, 3, 1];
  cases.push({
    name: "embedding() [17, 5] with 7 ids (repeats)",
    inputs: [U([17, 5])],
    gpu: ([w]) => ops.embedding(w, Tensor.from(ids, [7], { dtype: "i32" })),
    ref: ([w]) => embeddingReference(w, ids),
  });
}

// fused RMSNorm and RoPE
for (const shape of [[3, 17], [2, 3, 64], [1, 1]]) {
  const C = shape.at(-1)!;
  cases.push({
    name: `rmsNorm() [${shape}]`,
    inputs: [U(shape), U([C])],
    gpu: ([x, w]) => ops.rmsNorm(x, w, 1e-6),
    ref: ([x, w]) => normReference.rmsNorm(x, w, 1e-6),
  });
}
{
  // cos/sin tables with equal halves, as RoPE builds them
  const table = (seed: number) => {
    const a = randArray([2, 1, 3, 8], seed);
    for (let i = 0; i < a.data.length; i++) if (i % 8 >= 4) a.data[i] = a.data[i - 4];
    return a;
  };
  const cos = table(31);
  const sin = table(32);
  cases.push({
    name: "rope() [2, 3, 3, 8]",
    inputs: [U([2, 3, 3, 8])],
    gpu: ([x]) => ops.rope(x, toTensor(cos), toTensor(sin)),
    ref: ([x]) => normReference.rope(x, cos, sin),
  });
}

// fused attention: causal, a padding key, GQA 2:1, S > T (3 earlier keys)
{
  const [B, H, Hkv, T, S, D] = [2, 4, 2, 3, 6, 8];
  const mask = Array.from({ length: B * S }, (_, i) => (i === S + 1 ? 0 : 1));
  cases.push({
    name: `attention() q [${[B, H, T, D]}] kv [${[B, Hkv, S, D]}]`,
    inputs: [U([B, H, T, D]), U([B, Hkv, S, D]), U([B, Hkv, S, D])],
    gpu: ([q, k, v]) => ops.attention(q, k, v, { scale: 0.35, keyMask: Tensor.from(mask, [B, S]) }),
    ref: ([q, k, v]) => ops.attentionReference(q, k, v, mask, 0.35),
  });
}

for (const c of cases) {
  Deno.test({
    name: `${c.name} forward matches the CPU reference and backward matches finite differences`,
    ...gpuTest,
    fn: async () => {
      const xs = c.inputs.map((inp, i) => randArray(inp.shape, 100 + i, inp.kind));
      const expected = c.ref(xs);
      const tensors = xs.map((x, i) => toTensor(x, c.inputs[i].grad !== false));
      const wArr = randArray(expected.shape, 7);
      const w = toTensor(wArr);
      const y = tidy(() => {
        const out = c.gpu(tensors);
        out.backward(w);
        return out;
      });
      assertClose(
        await y.toArray(),
        expected.data,
        { atol: 1e-5, rtol: 1e-4 },
        `${c.name} forward`,
      );
      assertClose(y.shape, expected.shape, { atol: 0, rtol: 0 }, `${c.name} shape`);
      for (let k = 0; k < xs.length; k++) {
        if (c.inputs[k].grad === false) continue;
        const n = xs[k].data.length;
        const idx = c.fdSamples
          ? Array.from({ length: c.fdSamples }, (_, i) => (i * 7919) % n)
          : undefined;
        const fd = finiteDiff(c.ref, xs, wArr.data, k, 1e-4, idx);
        const g = tensors[k].grad;
        if (!g) throw new Error(`${c.name}: input ${k} got no gradient`);
        const got = await g.toArray();
        const pick = (a: ArrayLike<number>) => (idx ? idx.map((i) => a[i]) : Array.from(a));
        const scale = Math.max(1, ...pick(fd).map(Math.abs));
        assertClose(
          pick(got),
          pick(fd),
          { atol: 2e-3 * scale, rtol: 2e-3 },
          `${c.name} grad of input ${k}`,
        );
      }
      [...tensors, w, y].forEach((t) => {
        t.grad?.dispose();
        t.dispose();
      });
    },
  });
}

Deno.test({
  name: "siluMul() gives the same bits as silu then mul, forward and both gradients",
  ...gpuTest,
  fn: async () => {
    const xa = randArray([5, 67], 11);
    const ya = randArray([5, 67], 12);
    const wa = randArray([5, 67], 13);
    const run = async (fused: boolean) => {
      const [x, y] = [toTensor(xa, true), toTensor(ya, true)];
      const out = tidy(() => {
        const o = fused ? ops.siluMul(x, y) : ops.mul(ops.silu(x), y);
        o.backward(toTensor(wa));
        return o;
      });
      return [await out.toArray(), await x.grad!.toArray(), await y.grad!.toArray()].map((a) =>
        Array.from(a)
      );
    };
    const [fused, composed] = [await run(true), await run(false)];
    ["forward", "d/dgate", "d/dup"].forEach((what, i) =>
      assertEquals(fused[i], composed[i], `siluMul ${what}`)
    );
  },
});

Deno.test({
  name: "addRmsNorm() gives the same bits as add then rmsNorm",
  ...gpuTest,
  fn: async () => {
    const [x, y, w] = [[4, 3, 37], [4, 3, 37], [37]].map((s, i) => toTensor(randArray(s, 20 + i)));
    const [sum, normed] = ops.addRmsNorm(x, y, w, 1e-6);
    const s2 = ops.add(x, y);
    assertEquals(Array.from(await sum.toArray()), Array.from(await s2.toArray()), "sum");
    assertEquals(
      Array.from(await normed.toArray()),
      Array.from(await ops.rmsNorm(s2, w, 1e-6).toArray()),
      "normed",
    );
  },
});
