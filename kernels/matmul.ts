/**
 * Batched matmul C[b] = A[b] · B[b] with arbitrary strides, so transposed
 * operands and broadcast batches need no copies.
 *
 * Register tiling without workgroup memory: each invocation owns a TM x TN
 * block of C. On CPU adapters (llvmpipe/lavapipe) barriers and workgroup memory
 * cost more than they save (DESIGN.md measured 3.5 vs 7.7 GFLOP/s at 1024^3).
 * @module
 */
import { declareKernel, memoKernel } from "./declare.ts";
import { half2Fn } from "./weights.ts";

export const MM = { tile: { tm: 4, tn: 4, wx: 8, wy: 8 } } as const;

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
  /** Invocation rows per workgroup: fewer than 8 when M is small (no idle rows launched). */
  wy = 8,
) => {
  const W = 8; // 8 x wy invocations per workgroup: a 64 x 8wy tile
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
    workgroupSize: [W, wy],
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
  let m0 = (wid.y * ${wy}u + lid.y) * 8u;
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
 * x·Wᵀ for linear layers at batch sizes past the GEMV's, with what follows
 * the products fused in (inference): `siluMul` reads gate (b) and up (b2)
 * and stores silu(x·gateᵀ) * (x·upᵀ); `qkv` computes three projections (wq,
 * wk, wv, each (N_p, K)) into three outputs in one dispatch, each 8-column
 * block of one of them per invocation, with their biases when `bias`. Each output is matmulVec4Kernel's
 * (transB) multiply-adds in its order, then siluMul's or the bias add's
 * expression: the same bits as the unfused ops. A (M, K) row-major, K % 4 == 0.
 */
export const linearTileKernel = memoKernel((
  bType: "f32" | "bf16" | "f16",
  epilogue: "siluMul" | "qkv",
  bias = false,
  /** Invocation rows per workgroup (fewer than 8 for small M). */
  wy = 8,
) => {
  const W = 8;
  const R = [0, 1, 2, 3, 4, 5, 6, 7];
  const Q = [0, 1, 2, 3];
  const half = bType !== "f32";
  const load = (fn: string, arr: string) =>
    half
      ? `fn ${fn}(i: u32) -> vec4<f32> { return vec4<f32>(half2(${arr}[i / 2u]), half2(${arr}[i / 2u + 1u])); }`
      : `fn ${fn}(i: u32) -> vec4<f32> { return ${arr}[i / 4u]; }`;
  /** The transB k-step of matmulVec4Kernel for weight loader `ld` into accumulators `acc`. */
  const kStep = (ld: string, p: string, acc: string, withA: boolean) => {
    const lines: string[] = [];
    if (withA) {
      for (const i of R) lines.push(`let a_${i} = a4[(min(m0 + ${i}u, M - 1u) * K + k) / 4u];`);
    }
    for (const j of R) lines.push(`let ${p}c_${j} = ${ld}(min(n0 + ${j}u, N - 1u) * K + k);`);
    for (const kk of Q) {
      for (const h of [0, 1]) {
        const c = Q.map((q) => `${p}c_${4 * h + q}.${"xyzw"[kk]}`).join(", ");
        lines.push(`let ${p}_${kk}_${h} = vec4<f32>(${c});`);
      }
    }
    for (const kk of Q) {
      for (const i of R) {
        const a = `a_${i}.${"xyzw"[kk]}`;
        lines.push(`${acc}_${i}_0 += ${a} * ${p}_${kk}_0; ${acc}_${i}_1 += ${a} * ${p}_${kk}_1;`);
      }
    }
    return lines.join("\n      ");
  };
  const decl = (acc: string) =>
    R.map((i) => `var ${acc}_${i}_0 = vec4<f32>(0.0); var ${acc}_${i}_1 = vec4<f32>(0.0);`).join(
      " ",
    );
  const weightType = half ? "u32" : "vec4<f32>";
  if (epilogue === "siluMul") {
    const stores = R.map((i) =>
      `if (m0 + ${i}u < M) { store(m0 + ${i}u, n0, N, c_${i}_0 / (vec4<f32>(1.0) + exp(-c_${i}_0)) * d_${i}_0, c_${i}_1 / (vec4<f32>(1.0) + exp(-c_${i}_1)) * d_${i}_1); }`
    ).join("\n  ");
    return declareKernel<string, string, string>({
      label: "matmul_silu_mul",
      inputs: { a4: "vec4<f32>", b: weightType, b2: weightType },
      outputs: { c: "f32" },
      params: { M: "u32", N: "u32", K: "u32" },
      grid: "workgroups",
      workgroupSize: [W, wy],
      helpers: `${half ? half2Fn(bType) : ""}
${load("ldb4", "b")}
${load("ldb4_up", "b2")}
fn store(m: u32, n0: u32, N: u32, lo: vec4<f32>, hi: vec4<f32>) {
  let row = m * N;
  for (var j = 0u; j < 8u; j++) {
    if (n0 + j < N) { c[row + n0 + j] = select(hi[j - 4u], lo[min(j, 3u)], j < 4u); }
  }
}`,
      main: `
  let M = params.M; let N = params.N; let K = params.K;
  let m0 = (wid.y * ${wy}u + lid.y) * 8u;
  let n0 = (wid.x * ${W}u + lid.x) * 8u;
  if (m0 >= M || n0 >= N) { return; }
  ${decl("c")}
  ${decl("d")}
  for (var k = 0u; k < K; k += 4u) {
      ${kStep("ldb4", "b", "c", true)}
      ${kStep("ldb4_up", "e", "d", false)}
  }
  ${stores}`,
    });
  }
  // qkv: the column blocks of q, then k, then v; each invocation computes one 8-column block
  const part = (p: "q" | "k" | "v") => {
    const biasOf = (j: number) => `b${p}[min(n0 + ${j}u, N - 1u)]`;
    const lo = bias ? ` + vec4<f32>(${[0, 1, 2, 3].map(biasOf).join(", ")})` : "";
    const hi = bias ? ` + vec4<f32>(${[4, 5, 6, 7].map(biasOf).join(", ")})` : "";
    const stores = R.map((i) =>
      `if (m0 + ${i}u < M) { let lo = c_${i}_0${lo}; let hi = c_${i}_1${hi}; for (var j = 0u; j < 8u; j++) { if (n0 + j < N) { c${p}[(m0 + ${i}u) * N + n0 + j] = select(hi[j - 4u], lo[min(j, 3u)], j < 4u); } } }`
    ).join("\n    ");
    return `{
    let N = params.N${p};
    ${decl("c")}
    for (var k = 0u; k < K; k += 4u) {
      ${kStep(`ldw${p}`, "b", "c", true)}
    }
    ${stores}
  }`;
  };
  return declareKernel<string, string, string>({
    label: "matmul_qkv",
    inputs: {
      a4: "vec4<f32>",
      wq: weightType,
      wk: weightType,
      wv: weightType,
      ...(bias ? { bq: "f32", bk: "f32", bv: "f32" } : {}),
    } as Record<string, string>,
    outputs: { cq: "f32", ck: "f32", cv: "f32" },
    params: {
      M: "u32",
      K: "u32",
      Nq: "u32",
      Nk: "u32",
      Nv: "u32",
      qb: "u32",
      kb: "u32",
      vb: "u32",
    },
    grid: "workgroups",
    workgroupSize: [W, wy],
    helpers: `${half ? half2Fn(bType) : ""}
${load("ldwq", "wq")}
${load("ldwk", "wk")}
${load("ldwv", "wv")}`,
    main: `
  let M = params.M; let K = params.K;
  let m0 = (wid.y * ${wy}u + lid.y) * 8u;
  let block = wid.x * ${W}u + lid.x; // 8-column blocks of q, then of k, then of v
  if (m0 >= M || block >= params.qb + params.kb + params.vb) { return; }
  if (block < params.qb) {
    let n0 = block * 8u;
    ${part("q")}
  } else if (block < params.qb + params.kb) {
    let n0 = (block - params.qb) * 8u;
    ${part("k")}
  } else {
    let n0 = (block - params.qb - params.kb) * 8u;
    ${part("v")}
  }`,
  });
});
