/**
 * Batched matmul C[b] = A[b] · B[b] with arbitrary strides, so transposed
 * operands and broadcast batches need no copies.
 *
 * Register tiling without workgroup memory: each invocation owns a TM x TN
 * block of C. On CPU adapters (llvmpipe/lavapipe) barriers and workgroup memory
 * cost more than they save (DESIGN.md measured 3.5 vs 7.7 GFLOP/s at 1024^3).
 * @module
 */
import { declareKernel, type KernelSpec, memoKernel } from "./declare.ts";

export const MM = { tile: { tm: 4, tn: 4, wx: 8, wy: 8 } } as const;

/** `half2(w)`: the two bf16/f16 halves packed in a u32, low half first. */
function half2Fn(bType: "bf16" | "f16"): string {
  const body = bType === "bf16"
    ? "return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));"
    : "return unpack2x16float(w);";
  return `fn half2(w: u32) -> vec2<f32> { ${body} }`;
}

/**
 * `ldb4(i)`: four consecutive elements of b from element index i (a multiple
 * of 4), from f32 vec4s or from bf16/f16 halves packed two per u32.
 */
function loadB4(bType: "f32" | "bf16" | "f16"): string {
  if (bType === "f32") return `fn ldb4(i: u32) -> vec4<f32> { return b[i / 4u]; }`;
  return /* wgsl */ `${half2Fn(bType)}
fn ldb4(i: u32) -> vec4<f32> { return vec4<f32>(half2(b[i / 2u]), half2(b[i / 2u + 1u])); }`;
}

/** Sizes, and the batch/row/col strides of a (m, k) and b (k, n): transposes need no copy. */
const PARAMS = {
  M: "u32",
  N: "u32",
  K: "u32",
  batch: "u32",
  sab: "u32",
  sam: "u32",
  sak: "u32",
  sbb: "u32",
  sbk: "u32",
  sbn: "u32",
} as const;

/**
 * `vecB`: B is f32, contiguous along n with N % 4 == 0 (vec4 loads of B rows).
 * Other layouts use scalar loads; `bType` bf16/f16 reads B packed two per u32
 * (weights stay in their stored precision).
 */
export const matmulKernel = memoKernel((vecB: boolean, bType: "f32" | "bf16" | "f16" = "f32") => {
  const { tm, tn, wx, wy } = MM.tile;
  const half = bType !== "f32";
  // b is read as vec4 rows (b4), packed halves (bw) or scalars (b)
  const bType4 = vecB ? "vec4<f32>" : half ? "u32" : "f32";
  const bHelper = vecB ? "" : half
    ? `fn ldb(i: u32) -> f32 {
  let w = b[i / 2u];
  let h = select(w & 0xffffu, w >> 16u, (i & 1u) == 1u);
  return ${bType === "bf16" ? "bitcast<f32>(h << 16u)" : "unpack2x16float(h).x"};
}`
    : `fn ldb(i: u32) -> f32 { return b[i]; }`;
  const loadB = vecB ? `let bv = b[(bOff + k * sbk + n0) / 4u];` : `let bv = vec4<f32>(
        ldb(bOff + k * sbk + min(n0 + 0u, N - 1u) * sbn),
        ldb(bOff + k * sbk + min(n0 + 1u, N - 1u) * sbn),
        ldb(bOff + k * sbk + min(n0 + 2u, N - 1u) * sbn),
        ldb(bOff + k * sbk + min(n0 + 3u, N - 1u) * sbn));`;
  return declareKernel({
    label: "matmul",
    inputs: { a: "f32", b: bType4 },
    outputs: { c: "f32" },
    params: PARAMS,
    grid: "workgroups",
    workgroupSize: [wx, wy],
    helpers: bHelper,
    main: `
  let M = params.M; let N = params.N; let K = params.K;
  let bz = wid.z;
  let m0 = (wid.y * ${wy}u + lid.y) * ${tm}u;
  let n0 = (wid.x * ${wx}u + lid.x) * ${tn}u;
  if (m0 >= M || n0 >= N) { return; }
  let sab = params.sab; let sam = params.sam; let sak = params.sak;
  let sbb = params.sbb; let sbk = params.sbk; let sbn = params.sbn;
  let aOff = bz * sab; let bOff = bz * sbb;
  // Rows past M read row M-1 (valid memory); their results are not stored.
  let r0 = aOff + min(m0 + 0u, M - 1u) * sam;
  let r1 = aOff + min(m0 + 1u, M - 1u) * sam;
  let r2 = aOff + min(m0 + 2u, M - 1u) * sam;
  let r3 = aOff + min(m0 + 3u, M - 1u) * sam;
  var c0 = vec4<f32>(0.0); var c1 = vec4<f32>(0.0); var c2 = vec4<f32>(0.0); var c3 = vec4<f32>(0.0);
  for (var k = 0u; k < K; k++) {
    ${loadB}
    let ko = k * sak;
    c0 += a[r0 + ko] * bv; c1 += a[r1 + ko] * bv; c2 += a[r2 + ko] * bv; c3 += a[r3 + ko] * bv;
  }
  let cOff = bz * M * N;
  let rows = array<vec4<f32>, 4>(c0, c1, c2, c3);
  for (var i = 0u; i < ${tm}u; i++) {
    let m = m0 + i;
    if (m < M) {
      for (var j = 0u; j < ${tn}u; j++) {
        if (n0 + j < N) { c[cOff + m * N + n0 + j] = rows[i][j]; }
      }
    }
  }`,
  });
});

/**
 * The fast path: each invocation owns 8x8 outputs and reads both operands as
 * vec4 along their contiguous axis, 4 k at a time: 16 vec4 loads feed 256
 * FMAs. Needs the contiguous axis of A (K, or M if transA) and of B (N, or K
 * if transB) to be a multiple of 4, and K % 4 == 0. Same params as
 * matmulKernel. Fully unrolled into named registers: indexed arrays spill on
 * CPU adapters.
 */
export const matmulVec4Kernel = memoKernel((
  transA: boolean,
  transB: boolean,
  bType: "f32" | "bf16" | "f16" = "f32",
  /** Add a bias (N) in the store, as the add op would after the product (inference). */
  bias = false,
) => {
  const W = 8; // 8x8 invocations per workgroup: a 64x64 tile
  const R = [0, 1, 2, 3, 4, 5, 6, 7];
  const Q = [0, 1, 2, 3];
  const lines: string[] = [];
  // A: a(i, kk) as a WGSL expression
  let aAt: (i: number, kk: number) => string;
  if (transA) {
    // A stored (K, M): vec4 along m, a_kk_g holds rows m0+4g..m0+4g+3 at k+kk
    for (const kk of Q) {
      for (const g of [0, 1]) {
        lines.push(
          `let a_${kk}_${g} = a4[(aOff + (k + ${kk}u) * M + min(m0 + ${4 * g}u, M - 4u)) / 4u];`,
        );
      }
    }
    aAt = (i, kk) => `a_${kk}_${i >> 2}.${"xyzw"[i & 3]}`;
  } else {
    // A stored (M, K): vec4 along k, a_i holds a(m0+i, k..k+3)
    for (const i of R) {
      lines.push(`let a_${i} = a4[(aOff + min(m0 + ${i}u, M - 1u) * K + k) / 4u];`);
    }
    aAt = (i, kk) => `a_${i}.${"xyzw"[kk]}`;
  }
  if (transB) {
    // B stored (N, K): vec4 along k per column, regrouped into rows of 4 columns
    for (const j of R) {
      lines.push(`let bc_${j} = ldb4(bOff + min(n0 + ${j}u, N - 1u) * K + k);`);
    }
    for (const kk of Q) {
      for (const h of [0, 1]) {
        const c = Q.map((q) => `bc_${4 * h + q}.${"xyzw"[kk]}`).join(", ");
        lines.push(`let b_${kk}_${h} = vec4<f32>(${c});`);
      }
    }
  } else {
    // B stored (K, N): vec4 along n
    for (const kk of Q) {
      for (const h of [0, 1]) {
        lines.push(
          `let b_${kk}_${h} = ldb4(bOff + (k + ${kk}u) * N + min(n0 + ${4 * h}u, N - 4u));`,
        );
      }
    }
  }
  for (const kk of Q) {
    for (const i of R) {
      lines.push(`c_${i}_0 += ${aAt(i, kk)} * b_${kk}_0; c_${i}_1 += ${aAt(i, kk)} * b_${kk}_1;`);
    }
  }
  const decl = R.map((i) => `var c_${i}_0 = vec4<f32>(0.0); var c_${i}_1 = vec4<f32>(0.0);`).join(
    "\n  ",
  );
  const [lo, hi] = bias ? [" + bias_lo", " + bias_hi"] : ["", ""];
  const stores = R.map((i) =>
    `if (m0 + ${i}u < M) { store(cOff + (m0 + ${i}u) * N, n0, N, c_${i}_0${lo}, c_${i}_1${hi}); }`
  ).join("\n  ");
  // columns past N read bias N-1 (valid memory), unstored
  const biasAt = (j: number) => `bias[min(n0 + ${j}u, N - 1u)]`;
  const biasLoads = bias
    ? `let bias_lo = vec4<f32>(${[0, 1, 2, 3].map(biasAt).join(", ")});
  let bias_hi = vec4<f32>(${[4, 5, 6, 7].map(biasAt).join(", ")});`
    : "";
  const bHelper = loadB4(bType);
  return declareKernel({
    label: "matmul",
    inputs: {
      a4: "vec4<f32>",
      b: bType === "f32" ? "vec4<f32>" : "u32",
      ...(bias ? { bias: "f32" } : {}),
    } as Record<string, string>,
    outputs: { c: "f32" },
    params: PARAMS,
    grid: "workgroups",
    workgroupSize: [W, W],
    helpers: `${bHelper}
fn store(row: u32, n0: u32, N: u32, lo: vec4<f32>, hi: vec4<f32>) {
  if (n0 + 8u <= N) {
    c[row + n0] = lo.x; c[row + n0 + 1u] = lo.y; c[row + n0 + 2u] = lo.z; c[row + n0 + 3u] = lo.w;
    c[row + n0 + 4u] = hi.x; c[row + n0 + 5u] = hi.y; c[row + n0 + 6u] = hi.z; c[row + n0 + 7u] = hi.w;
    return;
  }
  for (var j = 0u; j < 8u; j++) {
    if (n0 + j < N) { c[row + n0 + j] = select(hi[j - 4u], lo[min(j, 3u)], j < 4u); }
  }
}`,
    main: `
  let M = params.M; let N = params.N; let K = params.K;
  let bz = wid.z;
  let m0 = (wid.y * ${W}u + lid.y) * 8u;
  let n0 = (wid.x * ${W}u + lid.x) * 8u;
  if (m0 >= M || n0 >= N) { return; }
  let aOff = bz * params.sab; let bOff = bz * params.sbb;
  ${decl}
  for (var k = 0u; k < K; k += 4u) {
    ${lines.join("\n    ")}
  }
  let cOff = bz * M * N;
  ${biasLoads}
  ${stores}`,
  });
});

/**
 * Decode-shaped products (few rows): c (M, N) = a (M, K) · bᵀ with b (N, K)
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
 */
type WeightType = "f32" | "bf16" | "f16";

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
