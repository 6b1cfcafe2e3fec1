/**
 * Products with group-wise int4/int8 weights (engine/quant/format.ts's
 * layout: codes packed along K per output row, an f16 scale and zero per
 * group), dequantized in registers: no float copy of a weight exists.
 *
 * Each word of codes contributes scale·(a·codes - zero·Σa) over its 8 (int4)
 * or 4 (int8) activations: the zero point costs one multiply per word, not
 * one per weight. The GEMV (decode) and the 8x8 tile (prefill, batches) add
 * the words' contributions in k order with the same expression, so they give
 * the same bits. A third kernel runs the product backwards, dX = dY·W, for
 * LoRA training on a frozen quantized base.
 * @module
 */
import { declareKernel, memoKernel } from "./declare.ts";

export type QuantBitsK = 4 | 8;

/** Codes per u32 word. */
const per = (bits: QuantBitsK) => 32 / bits;

/**
 * `codes(w, h)`: codes 4h..4h+3 of word w as a vec4 (int4: h 0 or 1; int8: h 0),
 * and `qdot`: one word's contribution for its activations (two vec4 for int4, one for int8).
 */
function wordFns(bits: QuantBitsK): string {
  if (bits === 4) {
    return /* wgsl */ `
fn codes(w: u32, h: u32) -> vec4<f32> {
  return vec4<f32>((vec4<u32>(w) >> (vec4<u32>(0u, 4u, 8u, 12u) + 16u * h)) & vec4<u32>(15u));
}
fn asum(lo: vec4<f32>, hi: vec4<f32>) -> f32 { return dot(lo + hi, vec4<f32>(1.0)); }
fn qdot(lo: vec4<f32>, hi: vec4<f32>, s: f32, w: u32, sz: vec2<f32>) -> f32 {
  return sz.x * (dot(lo, codes(w, 0u)) + dot(hi, codes(w, 1u)) - sz.y * s);
}`;
  }
  return /* wgsl */ `
fn codes(w: u32, h: u32) -> vec4<f32> {
  return vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u));
}
fn asum(a: vec4<f32>) -> f32 { return dot(a, vec4<f32>(1.0)); }
fn qdot(a: vec4<f32>, s: f32, w: u32, sz: vec2<f32>) -> f32 {
  return sz.x * (dot(a, codes(w, 0u)) - sz.y * s);
}`;
}

/** Quantized GEMV's output columns per invocation. */
export const QGEMV_COLUMNS = 4;

/**
 * c (M, N) = a (M, K) · Wᵀ for few rows (decode): one invocation per `rows`
 * rows (1 or 4) and QGEMV_COLUMNS columns, streaming its weight rows 128
 * bits (32 int4 or 16 int8 codes, one group) per load. Needs K % 32 == 0 and
 * a group size that is a multiple of 32.
 */
export const quantGemvKernel = memoKernel((bits: QuantBitsK, rows: 1 | 4, bias: boolean) => {
  const cols = QGEMV_COLUMNS;
  const R = Array.from({ length: rows }, (_, r) => r);
  const J = Array.from({ length: cols }, (_, j) => j);
  const words = [0, 1, 2, 3]; // words of one load
  const vecsPerWord = bits === 4 ? 2 : 1;
  const V = Array.from({ length: 4 * vecsPerWord }, (_, t) => t);
  const comps = ["x", "y", "z", "w"];
  const act = R.map((r) =>
    V.map((t) => `let a${r}_${t} = a4[x${r} + q * ${4 * vecsPerWord}u + ${t}u];`).join(" ") +
    "\n    " +
    words.map((u) =>
      bits === 4
        ? `let s${r}_${u} = asum(a${r}_${2 * u}, a${r}_${2 * u + 1});`
        : `let s${r}_${u} = asum(a${r}_${u});`
    ).join(" ")
  ).join("\n    ");
  const weights = J.map((j) =>
    `let w${j} = qw[o${j} + q]; let z${j} = unpack2x16float(sz[g${j} + (q * ${
      4 * per(bits)
    }u) / params.gs]);`
  ).join("\n    ");
  const fmas = R.flatMap((r) =>
    J.map((j) =>
      words.map((u) => {
        const a = bits === 4 ? `a${r}_${2 * u}, a${r}_${2 * u + 1}` : `a${r}_${u}`;
        return `c${r}_${j} += qdot(${a}, s${r}_${u}, w${j}.${comps[u]}, z${j});`;
      }).join(" ")
    )
  ).join("\n    ");
  return declareKernel({
    label: `qgemv${bits}`,
    inputs: {
      a4: "vec4<f32>",
      qw: "vec4<u32>",
      sz: "u32",
      ...(bias ? { bias: "f32" } : {}),
    } as Record<string, string>,
    outputs: { c: "f32" },
    params: { M: "u32", N: "u32", K: "u32", G: "u32", gs: "u32" },
    grid: "elements",
    workgroupSize: [64],
    helpers: wordFns(bits),
    main: `
  let i = flat_index(gid, nwg);
  let M = params.M; let N = params.N;
  let loads = params.K / ${4 * per(bits)}u; // 128-bit loads per weight row
  let blocks = (N + ${cols - 1}u) / ${cols}u;
  if (i >= ((M + ${rows - 1}u) / ${rows}u) * blocks) { return; }
  // rows past M re-read row M-1 and columns past N column N-1 (valid memory), unstored
  let m0 = (i / blocks) * ${rows}u;
  let n0 = (i % blocks) * ${cols}u;
  ${J.map((j) => `let col${j} = min(n0 + ${j}u, N - 1u);`).join(" ")}
  ${J.map((j) => `let o${j} = col${j} * loads; let g${j} = col${j} * params.G;`).join(" ")}
  ${R.map((r) => `let x${r} = min(m0 + ${r}u, M - 1u) * (params.K / 4u);`).join(" ")}
  ${R.flatMap((r) => J.map((j) => `var c${r}_${j} = 0.0;`)).join(" ")}
  for (var q = 0u; q < loads; q++) {
    ${act}
    ${weights}
    ${fmas}
  }
  ${
      R.flatMap((r) =>
        J.map((j) =>
          `if (m0 + ${r}u < M && n0 + ${j}u < N) { c[(m0 + ${r}u) * N + n0 + ${j}u] = c${r}_${j}${
            bias ? ` + bias[n0 + ${j}u]` : ""
          }; }`
        )
      ).join("\n  ")
    }`,
  });
});

/**
 * c (M, N) = a (M, K) · Wᵀ for many rows: each invocation owns 8 rows x 8
 * columns and steps one word of codes at a time, the GEMV's expression in
 * its order (the same bits). `wy` invocation rows per workgroup.
 */
export const quantTileKernel = memoKernel((bits: QuantBitsK, bias: boolean, wy: number) => {
  const I = [0, 1, 2, 3, 4, 5, 6, 7];
  const act = I.map((i) =>
    bits === 4
      ? `let l${i} = a4[r${i} + kw * 2u]; let h${i} = a4[r${i} + kw * 2u + 1u]; let s${i} = asum(l${i}, h${i});`
      : `let l${i} = a4[r${i} + kw]; let s${i} = asum(l${i});`
  ).join("\n    ");
  const weights = I.map((j) =>
    `let w${j} = qw[o${j} + kw]; let z${j} = unpack2x16float(sz[g${j} + grp]);`
  ).join("\n    ");
  const fmas = I.map((i) =>
    I.map((j) =>
      `c${i}_${j} += qdot(${bits === 4 ? `l${i}, h${i}` : `l${i}`}, s${i}, w${j}, z${j});`
    ).join(" ")
  ).join("\n    ");
  const stores = I.map((i) =>
    I.map((j) =>
      `if (m0 + ${i}u < M && n0 + ${j}u < N) { c[(m0 + ${i}u) * N + n0 + ${j}u] = c${i}_${j}${
        bias ? ` + bias[n0 + ${j}u]` : ""
      }; }`
    ).join(" ")
  ).join("\n  ");
  return declareKernel({
    label: `qmatmul${bits}`,
    inputs: {
      a4: "vec4<f32>",
      qw: "u32",
      sz: "u32",
      ...(bias ? { bias: "f32" } : {}),
    } as Record<string, string>,
    outputs: { c: "f32" },
    params: { M: "u32", N: "u32", K: "u32", G: "u32", gs: "u32" },
    grid: "workgroups",
    workgroupSize: [8, wy],
    helpers: wordFns(bits),
    main: `
  let M = params.M; let N = params.N;
  let m0 = (wid.y * ${wy}u + lid.y) * 8u;
  let n0 = (wid.x * 8u + lid.x) * 8u;
  if (m0 >= M || n0 >= N) { return; }
  let words = params.K / ${per(bits)}u;
  ${I.map((i) => `let r${i} = min(m0 + ${i}u, M - 1u) * (params.K / 4u);`).join(" ")}
  ${
      I.map((j) =>
        `let o${j} = min(n0 + ${j}u, N - 1u) * words; let g${j} = min(n0 + ${j}u, N - 1u) * params.G;`
      ).join(" ")
    }
  ${I.flatMap((i) => I.map((j) => `var c${i}_${j} = 0.0;`)).join(" ")}
  for (var kw = 0u; kw < words; kw++) {
    let grp = (kw * ${per(bits)}u) / params.gs;
    ${act}
    ${weights}
    ${fmas}
  }
  ${stores}`,
  });
});

/**
 * dX (M, K) = dY (M, N) · W: the backward of x·Wᵀ through a frozen quantized
 * W. One invocation per 4 rows and one word of K (8 or 4 columns).
 */
export const quantGradKernel = memoKernel((bits: QuantBitsK) => {
  const P = per(bits);
  const H = bits === 4 ? [0, 1] : [0];
  const R = [0, 1, 2, 3];
  return declareKernel({
    label: `qmatmul${bits}_grad`,
    inputs: { dy: "f32", qw: "u32", sz: "u32" },
    outputs: { dx: "f32" },
    params: { M: "u32", N: "u32", K: "u32", G: "u32", gs: "u32" },
    grid: "elements",
    workgroupSize: [64],
    helpers: wordFns(bits),
    main: `
  let i = flat_index(gid, nwg);
  let M = params.M; let N = params.N; let K = params.K;
  let words = K / ${P}u;
  if (i >= ((M + 3u) / 4u) * words) { return; }
  let m0 = (i / words) * 4u;
  let kw = i % words;
  let grp = (kw * ${P}u) / params.gs;
  ${R.map((r) => `let y${r} = min(m0 + ${r}u, M - 1u) * N;`).join(" ")}
  ${R.flatMap((r) => H.map((h) => `var d${r}_${h} = vec4<f32>(0.0);`)).join(" ")}
  for (var n = 0u; n < N; n++) {
    let w = qw[n * words + kw];
    let z = unpack2x16float(sz[n * params.G + grp]);
    ${H.map((h) => `let v${h} = (codes(w, ${h}u) - z.y) * z.x;`).join(" ")}
    ${R.map((r) => H.map((h) => `d${r}_${h} += dy[y${r} + n] * v${h};`).join(" ")).join("\n    ")}
  }
  ${
      R.map((r) =>
        `if (m0 + ${r}u < M) { ${
          H.map((h) =>
            `for (var t = 0u; t < 4u; t++) { dx[(m0 + ${r}u) * K + kw * ${P}u + ${
              4 * h
            }u + t] = d${r}_${h}[t]; }`
          ).join(" ")
        } }`
      ).join("\n  ")
    }`,
  });
});

/** out (M, K)[m, j] = x[m, idx[j]]: act-order's column gather (and, with the inverse, its backward). */
export const gatherColumnsKernel = declareKernel({
  label: "gather_columns",
  inputs: { x: "f32", idx: "i32" },
  outputs: { out: "f32" },
  params: { n: "u32", K: "u32" },
  grid: "elements",
  workgroupSize: [64],
  main: `
  let i = flat_index(gid, nwg);
  if (i >= params.n) { return; }
  let K = params.K;
  out[i] = x[(i / K) * K + u32(idx[i % K])];`,
});
