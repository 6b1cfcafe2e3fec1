/**
 * The fused attention op against the composed attention (matmul, softmax,
 * matmul: ops with finite-difference-checked backwards) and the float64 CPU
 * reference: forward and the gradient of every input, on causal, padded,
 * cached and grouped-query shapes.
 */
import { attentionBias, composedAttention } from "../engine/nn.ts";
import { attention, attentionReference, mul, slice, sum } from "../engine/ops/mod.ts";
import { noGrad, tidy } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { assertClose, gpuTest, randArray, toTensor } from "./_helpers.ts";

interface Case {
  B: number;
  H: number;
  Hkv: number;
  T: number;
  S: number;
  D: number;
  /** Key slots of batch row 1 that are padding (left padding: 0..pad-1). */
  pad: number;
}

const cases: Case[] = [
  { B: 2, H: 4, Hkv: 2, T: 1, S: 1, D: 64, pad: 0 },
  { B: 2, H: 4, Hkv: 2, T: 7, S: 7, D: 64, pad: 3 },
  { B: 1, H: 7, Hkv: 1, T: 64, S: 64, D: 64, pad: 0 },
  { B: 2, H: 2, Hkv: 1, T: 130, S: 130, D: 128, pad: 5 },
  { B: 2, H: 7, Hkv: 1, T: 7, S: 20, D: 128, pad: 4 }, // S != T: 13 cached keys
  { B: 1, H: 4, Hkv: 2, T: 33, S: 40, D: 16, pad: 0 },
  // few query rows per group (decoding): the decode kernel, several key tiles, 2 dims per invocation
  { B: 2, H: 4, Hkv: 2, T: 1, S: 150, D: 128, pad: 70 },
  { B: 1, H: 8, Hkv: 2, T: 2, S: 9, D: 32, pad: 0 },
  // few rows per group but >= 64 rows in all: the row-per-invocation decode kernel
  { B: 4, H: 16, Hkv: 8, T: 1, S: 70, D: 32, pad: 30 },
  { B: 3, H: 14, Hkv: 2, T: 2, S: 5, D: 64, pad: 4 },
];

function keyMaskOf(c: Case): number[] {
  return Array.from({ length: c.B * c.S }, (_, i) => (i >= c.S && i - c.S < c.pad ? 0 : 1));
}

/** 1 for a query row that sees at least one key (padding rows see none). */
function rowWeights(c: Case, mask: number[]): Float64Array {
  const w = new Float64Array(c.B * c.H * c.T * c.D);
  const past = c.S - c.T;
  for (let b = 0; b < c.B; b++) {
    for (let h = 0; h < c.H; h++) {
      for (let t = 0; t < c.T; t++) {
        const sees = mask.slice(b * c.S, b * c.S + past + t + 1).some((m) => m === 1);
        for (let d = 0; d < c.D; d++) w[((b * c.H + h) * c.T + t) * c.D + d] = sees ? 1 : 0;
      }
    }
  }
  return w;
}

for (const c of cases) {
  const label = `B ${c.B} H ${c.H}:${c.Hkv} T ${c.T} S ${c.S} D ${c.D} pad ${c.pad}`;
  Deno.test({
    name: `fused attention equals the composed attention, forward and every gradient (${label})`,
    ...gpuTest,
    fn: async () => {
      const qa = randArray([c.B, c.H, c.T, c.D], 1);
      const ka = randArray([c.B, c.Hkv, c.S, c.D], 2);
      const va = randArray([c.B, c.Hkv, c.S, c.D], 3);
      const mask = keyMaskOf(c);
      const seen = rowWeights(c, mask);
      const g = randArray(qa.shape, 4);
      g.data.forEach((x, i) => g.data[i] = x * seen[i]); // no loss on rows that see nothing
      const scale = 1 / Math.sqrt(c.D);
      const run = async (fused: boolean) => {
        const [q, k, v] = [qa, ka, va].map((x) => toTensor(x, true));
        const out = tidy(() => {
          const o = fused
            ? attention(q, k, v, { scale, keyMask: Tensor.from(mask, [c.B, c.S]) })
            : composedAttention(q, k, v, attentionBias(mask, c.B, c.T, c.S), scale);
          const loss = sum(mul(o, toTensor(g)));
          loss.backward();
          return o;
        });
        const res = [
          await out.toArray(),
          ...await Promise.all([q, k, v].map((x) => x.grad!.toArray())),
        ];
        [q, k, v, out].forEach((x) => (x.grad?.dispose(), x.dispose()));
        return res.map((a) => Array.from(a));
      };
      const fused = await run(true);
      const composed = await run(false);
      const ref = attentionReference(qa, ka, va, mask, scale).data;
      const rows = (a: ArrayLike<number>) => Array.from(a).map((x, i) => x * seen[i]);
      assertClose(rows(fused[0]), rows(ref), { atol: 2e-5, rtol: 1e-4 }, `${label}: o vs float64`);
      assertClose(rows(fused[0]), rows(composed[0]), { atol: 2e-5, rtol: 1e-4 }, `${label}: o`);
      ["dq", "dk", "dv"].forEach((name, i) =>
        assertClose(fused[i + 1], composed[i + 1], { atol: 1e-5, rtol: 1e-4 }, `${label}: ${name}`)
      );
    },
  });
}

Deno.test({
  name:
    "fused attention reads a KV cache in place: the first S of maxLength slots (S 1, 7, 300; GQA 2:1, 7:1)",
  ...gpuTest,
  fn: async () => {
    for (const [H, Hkv, D] of [[4, 2, 16], [14, 2, 64]]) {
      for (const [S, T] of [[1, 1], [7, 1], [7, 3], [300, 1]]) {
        const [B, maxLength] = [2, 320];
        const qa = randArray([B, H, T, D], S);
        const keys = randArray([B, Hkv, maxLength, D], 2 * S + 1);
        const values = randArray([B, Hkv, maxLength, D], 3 * S + 2);
        const mask = Array.from({ length: B * S }, (_, i) => (i === S ? 0 : 1)); // row 1 pads its first
        const got = await noGrad(() =>
          tidy(() =>
            attention(toTensor(qa), toTensor(keys), toTensor(values), {
              scale: 0.125,
              keys: S,
              keyMask: Tensor.from(mask, [B, S]),
            })
          )
        ).toArray();
        const want = await noGrad(() =>
          tidy(() =>
            composedAttention(
              toTensor(qa),
              slice(toTensor(keys), 2, 0, S),
              slice(toTensor(values), 2, 0, S),
              attentionBias(mask, B, T, S),
              0.125,
            )
          )
        ).toArray();
        // row 1's query at S = 1 sees no key: zero in the fused op, uniform in the composed one
        const seen = rowWeights({ B, H, Hkv, T, S, D, pad: 1 }, mask);
        const rows = (a: ArrayLike<number>) => Array.from(a).map((x, i) => x * seen[i]);
        assertClose(
          rows(got),
          rows(want),
          { atol: 2e-6, rtol: 1e-5 },
          `H ${H}:${Hkv} S ${S} T ${T}`,
        );
      }
    }
  },
});
