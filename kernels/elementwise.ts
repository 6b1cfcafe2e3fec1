/**
 * Elementwise kernels with broadcasting, out[i] = f(a[ia], b[ib], c[ic]), and
 * the strided copy, fill and cast kernels the shape ops use.
 * @module
 */
import { MAX_RANK, WG } from "./common.ts";
import { declareKernel, memoKernel } from "./declare.ts";

/** How each input is read: `f` same shape as out, `s` a single value, `b` broadcast (strided). */
export type ReadMode = "f" | "s" | "b";

const NAMES = ["a", "b", "c"] as const;

/**
 * `expr` is a WGSL expression over `a`, `b`, `c` (f32 inputs, one per mode)
 * and `alpha` (f32 scalar). Params: n, rank, the output shape and each
 * input's strides (0 where broadcast), alpha.
 */
export const elementwiseKernel = memoKernel((modes: string, expr: string) => {
  const names = NAMES.slice(0, modes.length);
  const list = `u32[${MAX_RANK}]` as const;
  const loads = names.map((x, i) => {
    if (modes[i] === "f") return `let ${x} = in_${x}[i];`;
    if (modes[i] === "s") return `let ${x} = in_${x}[0];`;
    return `var o_${x} = 0u;
  for (var d = 0u; d < params.rank; d++) { o_${x} += idx[d] * strides_${x}_at(d); }
  let ${x} = in_${x}[o_${x}];`;
  }).join("\n  ");
  const unravel = modes.includes("b")
    ? `// unravel i over the output shape (row-major)
  var idx: array<u32, ${MAX_RANK}>;
  var rem = i;
  for (var d = i32(params.rank) - 1; d >= 0; d--) {
    let s = shape_at(u32(d));
    idx[d] = rem % s;
    rem = rem / s;
  }`
    : "";
  // inputs and strides depend on how many inputs there are: named by string
  return declareKernel<string, string, string>({
    label: "elementwise",
    inputs: Object.fromEntries(names.map((x) => [`in_${x}`, "f32"])),
    outputs: { out: "f32" },
    params: {
      n: "u32",
      rank: "u32",
      alpha: "f32",
      shape: list,
      ...Object.fromEntries(names.map((x) => [`strides_${x}`, list])),
    },
    grid: "elements",
    workgroupSize: [WG],
    main: `
  let i = flat_index(gid, nwg);
  if (i >= params.n) { return; }
  ${unravel}
  ${loads}
  let alpha = params.alpha;
  out[i] = ${expr};`,
  });
});

/** Elements each invocation of the vec4 elementwise kernel handles (4 vec4 loads per input). */
export const EW_VEC_ELEMENTS = 16;

/**
 * The streaming form of elementwiseKernel, for inputs that are all full-shape
 * (`f`) or single values (`s`) and a size that is a multiple of 4: vec4 loads
 * and stores, 16 elements per invocation, the same scalar `expr` per lane (so
 * results equal the scalar kernel's). Params: n4 (vec4s), alpha.
 */
export const elementwiseVec4Kernel = memoKernel((modes: string, expr: string) => {
  const names = NAMES.slice(0, modes.length);
  const lane = names.map((x, i) =>
    modes[i] === "f" ? `let ${x} = v_${x}[l];` : `let ${x} = in_${x}[0];`
  ).join(" ");
  const loads = names.map((x, i) => (modes[i] === "f" ? `let v_${x} = in_${x}[j];` : "")).join(" ");
  return declareKernel<string, string, string>({
    label: "elementwise",
    inputs: Object.fromEntries(
      names.map((x, i) => [`in_${x}`, modes[i] === "f" ? "vec4<f32>" : "f32"]),
    ),
    outputs: { out: "vec4<f32>" },
    params: { n4: "u32", alpha: "f32" },
    grid: "elements",
    workgroupSize: [WG],
    main: `
  let j0 = flat_index(gid, nwg) * ${EW_VEC_ELEMENTS / 4}u;
  let alpha = params.alpha;
  for (var j = j0; j < min(j0 + ${EW_VEC_ELEMENTS / 4}u, params.n4); j++) {
    ${loads}
    var r: vec4<f32>;
    for (var l = 0u; l < 4u; l++) { ${lane} r[l] = ${expr}; }
    out[j] = r;
  }`,
  });
});

/** Strided copy: dst[dstOffset + sum idx*dstStrides] = src[srcOffset + sum idx*srcStrides]. */
export const stridedCopyKernel = memoKernel((word: "f32" | "u32") =>
  declareKernel({
    label: "copy",
    inputs: { src: word },
    outputs: { dst: word },
    params: {
      n: "u32",
      rank: "u32",
      srcOffset: "u32",
      dstOffset: "u32",
      shape: `u32[${MAX_RANK}]`,
      srcStrides: `u32[${MAX_RANK}]`,
      dstStrides: `u32[${MAX_RANK}]`,
    },
    grid: "elements",
    workgroupSize: [WG],
    main: `
  let i = flat_index(gid, nwg);
  if (i >= params.n) { return; }
  var rem = i;
  var si = params.srcOffset;
  var di = params.dstOffset;
  for (var d = i32(params.rank) - 1; d >= 0; d--) {
    let s = shape_at(u32(d));
    let k = rem % s;
    rem = rem / s;
    si += k * srcStrides_at(u32(d));
    di += k * dstStrides_at(u32(d));
  }
  dst[di] = src[si];`,
  })
);

/** Fills n f32 words with a value. */
export const fillKernel = declareKernel({
  label: "fill",
  inputs: {},
  outputs: { out: "f32" },
  params: { n: "u32", value: "f32" },
  grid: "elements",
  workgroupSize: [WG],
  main: `
  let i = flat_index(gid, nwg);
  if (i < params.n) { out[i] = params.value; }`,
});

/** Unpacks bf16/f16 words (two per u32, little end first) to f32; i32 to f32. */
export const castToF32Kernel = memoKernel((from: "bf16" | "f16" | "i32") => {
  const body = from === "i32" ? "out[i] = f32(bitcast<i32>(src[i]));" : `let w = src[i / 2u];
  let h = select(w & 0xffffu, w >> 16u, (i & 1u) == 1u);
  ${from === "bf16" ? "out[i] = bitcast<f32>(h << 16u);" : "out[i] = unpack2x16float(h).x;"}`;
  return declareKernel({
    label: `cast_${from}`,
    inputs: { src: "u32" },
    outputs: { out: "f32" },
    params: { n: "u32" },
    grid: "elements",
    workgroupSize: [WG],
    main: `
  let i = flat_index(gid, nwg);
  if (i >= params.n) { return; }
  ${body}`,
  });
});
