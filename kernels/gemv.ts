/**
 * GEMV: decode-shaped products (few rows): c (M, N) = a (M, K) · bᵀ with b (N, K)
 * row-major, as a linear layer's weight is stored. One invocation per `rows`
 * rows (1 or 4) and GEMV_COLUMNS output columns: it streams its weight rows
 * along K, reading every weight once per `rows` rows, with none of the 8x8
 * tile's idle rows. Tuned on lavapipe, where decoding streams every weight
 * from DRAM (measured with weights beyond the cache, as in decoding):
 * - a load takes 4 f32 weights (`vec4<f32>`), or 8 bf16/f16 ones
 *   (`vec4<u32>`, when K % 8 == 0) or 4 (`vec2<u32>`): a CPU adapter pays per
 *   load instruction;
 * - 4 columns per invocation, each row read GEMV_UNROLL loads (64 bytes, a
 *   cache line) at a time: 1.1-1.3x the bandwidth of 8 columns one load at a
 *   time for K = 4864, the same for K = 896; 8 columns with 4 loads each is
 *   slower (too many streams in flight).
 * Each output is a scalar sum in k order, the 8x8 kernel's multiply-adds in
 * its order: results are bit-identical. Needs K % 4 == 0.
 * @module
 */
import { declareKernel, type KernelSpec, memoKernel } from "./declare.ts";
import { half2Fn, type WeightType } from "./weights.ts";

/** Output columns per GEMV invocation. */
const GEMV_COLUMNS = 4;
/** Consecutive loads of each weight row per GEMV loop step. */
const GEMV_UNROLL = 4;

/** Weights per load of `bType` when K is `K` (K % 4 == 0). */
export function weightsPerLoad(bType: WeightType, K: number): 4 | 8 {
  return bType !== "f32" && K % 8 === 0 ? 8 : 4;
}

/** What a GEMV does with its dot products before storing them. */
export type GemvEpilogue = "none" | "bias" | "siluMul";

/** The bindings and sizes one GEMV body reads and writes (WGSL names). */
interface GemvNames {
  b: string; // the weight (N, K)
  b2?: string; // the up weight, for siluMul
  bias?: string;
  c: string; // the output (M, N)
  N: string;
}

/**
 * WGSL statements computing one GEMV for invocation index `i` (in scope with
 * M, and `loads`, the weight loads per row). `siluMul` reads two weights of
 * one shape, gate (`b`) and up (`b2`), and stores silu(x·gateᵀ) * (x·upᵀ):
 * the gated MLP's product, with siluMul's expression, so the same bits as two
 * GEMVs then siluMul.
 */
function gemvBody(
  bType: WeightType,
  rows: 1 | 4,
  epilogue: GemvEpilogue,
  perLoad: 4 | 8,
  names: GemvNames,
): string {
  const gated = epilogue === "siluMul";
  const cols = gemvColumns(epilogue);
  const R = Array.from({ length: rows }, (_, r) => r);
  const J = Array.from({ length: cols }, (_, j) => j);
  // weight rows streamed per invocation: column j of b (and of b2 when gated)
  const S = gated ? [...J, ...J.map((j) => j + cols)] : J;
  const arrayOf = (s: number) => (s < cols ? names.b : names.b2!);
  const half = bType !== "f32";
  const vecs = perLoad / 4; // activation vec4s per load of weights
  const T = Array.from({ length: vecs }, (_, t) => t);
  // load u of this step from stream s's row, unpacked to vec4s w{s}_{u}_{t}
  const load = (s: number, u: string) => {
    const at = `${arrayOf(s)}[o${s} + q + ${u}u]`;
    if (!half) return `let w${s}_${u}_0 = ${at};`;
    const p = `p${s}_${u}`;
    return perLoad === 8
      ? `let ${p} = ${at}; let w${s}_${u}_0 = vec4(half2(${p}.x), half2(${p}.y)); let w${s}_${u}_1 = vec4(half2(${p}.z), half2(${p}.w));`
      : `let ${p} = ${at}; let w${s}_${u}_0 = vec4(half2(${p}.x), half2(${p}.y));`;
  };
  const fmas = (u: string) =>
    R.map((r) =>
      T.map((t) => `let a${r}_${u}_${t} = a4[x${r} + (q + ${u}u) * ${vecs}u + ${t}u];`).join(" ") +
      "\n    " +
      S.map((s) =>
        T.map((t) =>
          ["x", "y", "z", "w"].map((c) =>
            `s${r}_${s} += a${r}_${u}_${t}.${c} * w${s}_${u}_${t}.${c};`
          ).join(" ")
        ).join(" ")
      ).join("\n    ")
    ).join("\n    ");
  // one step of `unroll` loads per row: all loads first, then the multiply-adds in k order
  const step = (unroll: number) => {
    const U = Array.from({ length: unroll }, (_, u) => `${u}`);
    return `${S.map((s) => U.map((u) => load(s, u)).join("\n    ")).join("\n    ")}
    ${U.map(fmas).join("\n    ")}`;
  };
  const value = (r: number, j: number) =>
    epilogue === "bias"
      ? `s${r}_${j} + ${names.bias}[n0 + ${j}u]` // a linear layer's bias, added as the add op does
      : gated
      ? `s${r}_${j} / (1.0 + exp(-s${r}_${j})) * s${r}_${j + cols}` // siluMul's expression
      : `s${r}_${j}`;
  const N = names.N;
  return `
  let blocks = (${N} + ${cols - 1}u) / ${cols}u;
  if (i >= ((M + ${rows - 1}u) / ${rows}u) * blocks) { return; }
  // rows past M re-read row M-1 and columns past N column N-1 (valid memory), unstored
  let m0 = (i / blocks) * ${rows}u;
  let n0 = (i % blocks) * ${cols}u;
  ${S.map((s) => `let o${s} = min(n0 + ${s % cols}u, ${N} - 1u) * loads;`).join("\n  ")}
  ${R.map((r) => `let x${r} = min(m0 + ${r}u, M - 1u) * loads * ${vecs}u;`).join("\n  ")}
  ${R.flatMap((r) => S.map((s) => `var s${r}_${s} = 0.0;`)).join(" ")}
  let whole = loads - loads % ${GEMV_UNROLL}u;
  for (var q = 0u; q < whole; q += ${GEMV_UNROLL}u) {
    ${step(GEMV_UNROLL)}
  }
  for (var q = whole; q < loads; q++) {
    ${step(1)}
  }
  ${
    R.flatMap((r) =>
      J.map((j) =>
        `if (m0 + ${r}u < M && n0 + ${j}u < ${N}) { ${names.c}[(m0 + ${r}u) * ${N} + n0 + ${j}u] = ${
          value(r, j)
        }; }`
      )
    ).join("\n  ")
  }`;
}

/** The WGSL type a weight of `bType` is read as, `perLoad` weights per element. */
function weightArray(bType: WeightType, perLoad: 4 | 8): string {
  return bType === "f32" ? "vec4<f32>" : perLoad === 8 ? "vec4<u32>" : "vec2<u32>";
}

/** One GEMV with its epilogue (see gemvBody). */
function gemvSpec(bType: WeightType, rows: 1 | 4, epilogue: GemvEpilogue, perLoad: 4 | 8) {
  const gated = epilogue === "siluMul";
  const weights = weightArray(bType, perLoad);
  return {
    label: gated ? "gemv_silu_mul" : epilogue === "bias" ? "gemv_bias" : "gemv",
    inputs: {
      a4: "vec4<f32>",
      b: weights,
      ...(gated ? { b2: weights } : {}),
      ...(epilogue === "bias" ? { bias: "f32" } : {}),
    },
    outputs: { c: "f32" },
    params: { M: "u32", N: "u32", K: "u32" } as const,
    grid: "elements" as const,
    workgroupSize: [64] as const,
    helpers: bType === "f32" ? "" : half2Fn(bType),
    main: `
  let i = flat_index(gid, nwg);
  let M = params.M; let N = params.N;
  let loads = params.K / ${perLoad}u; // weight loads per row
  ${
      gemvBody(bType, rows, epilogue, perLoad, {
        b: "b",
        b2: "b2",
        bias: "bias",
        c: "c",
        N: "N",
      })
    }`,
  };
}

/**
 * Three GEMVs of one input in one dispatch: an attention layer's q, k and v
 * projections (with or without their biases) when decoding. Invocations
 * [0, nq) compute q, then k, then v; each is gemvBody's, so the same bits as
 * three GEMVs.
 */
export const gemvQkvKernel = memoKernel((
  bType: WeightType,
  rows: 1 | 4,
  perLoad: 4 | 8,
  bias: boolean,
) => {
  const weights = weightArray(bType, perLoad);
  const epilogue: GemvEpilogue = bias ? "bias" : "none";
  const part = (p: "q" | "k" | "v") =>
    gemvBody(bType, rows, epilogue, perLoad, {
      b: `w${p}`,
      bias: `b${p}`,
      c: `c${p}`,
      N: `params.N${p}`,
    });
  return declareKernel({
    label: "gemv_qkv",
    inputs: {
      a4: "vec4<f32>",
      wq: weights,
      wk: weights,
      wv: weights,
      ...(bias ? { bq: "f32", bk: "f32", bv: "f32" } : {}),
    } as Record<string, string>,
    outputs: { cq: "f32", ck: "f32", cv: "f32" },
    params: { M: "u32", Nq: "u32", Nk: "u32", Nv: "u32", K: "u32", nq: "u32", nk: "u32" },
    grid: "elements",
    workgroupSize: [64],
    helpers: bType === "f32" ? "" : half2Fn(bType),
    main: `
  let flat = flat_index(gid, nwg);
  let M = params.M;
  let loads = params.K / ${perLoad}u; // weight loads per row
  // nq, nk: the invocations of the q and k parts
  if (flat < params.nq) {
    let i = flat;${part("q")}
  } else if (flat < params.nq + params.nk) {
    let i = flat - params.nq;${part("k")}
  } else {
    let i = flat - params.nq - params.nk;${part("v")}
  }`,
  });
});

/**
 * Output columns per invocation of the GEMV for `epilogue` (launch ceil(N / this)
 * per row block): the gated one streams two weight rows per column.
 */
export function gemvColumns(epilogue: GemvEpilogue): number {
  return epilogue === "siluMul" ? GEMV_COLUMNS / 2 : GEMV_COLUMNS;
}

/**
 * The GEMV for weights of `bType`, `perLoad` weights per load (weightsPerLoad),
 * with its epilogue: binds a4, b (and b2 for siluMul, bias for bias) and c.
 */
export const gemvKernel = memoKernel((
  bType: WeightType,
  rows: 1 | 4,
  perLoad: 4 | 8,
  epilogue: GemvEpilogue = "none",
) =>
  declareKernel(
    gemvSpec(bType, rows, epilogue, perLoad) as KernelSpec<string, "c", "M" | "N" | "K">,
  )
);
