/** Counter-based normal random numbers on the GPU (PCG hash + Box-Muller), f32 or packed bf16. @module */
import { WG } from "./common.ts";
import { declareKernel, memoKernel } from "./declare.ts";

/** n values from (seed, mean, std); one invocation per output word (two bf16 per u32). */
export const randomNormalKernel = memoKernel((dtype: "f32" | "bf16") => {
  const body = dtype === "f32" ? "if (i < n) { out[i] = normal(i); }" : `if (2u * i < n) {
    let lo = bf16_bits(normal(2u * i));
    let hi = select(0u, bf16_bits(normal(2u * i + 1u)), 2u * i + 1u < n);
    out[i] = lo | (hi << 16u);
  }`;
  return declareKernel({
    label: "random_normal",
    inputs: {},
    outputs: { out: dtype === "f32" ? "f32" : "u32" },
    params: { n: "u32", seed: "u32", mean: "f32", stddev: "f32" },
    grid: "elements",
    workgroupSize: [WG],
    helpers: /* wgsl */ `
fn pcg(v: u32) -> u32 {
  let s = v * 747796405u + 2891336453u;
  let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (w >> 22u) ^ w;
}
fn normal(i: u32) -> f32 {
  let a = pcg(i * 2u + pcg(params.seed));
  let b = pcg(a ^ 0x9e3779b9u);
  let u1 = (f32(a >> 8u) + 1.0) / 16777217.0;
  let u2 = f32(b >> 8u) / 16777216.0;
  return params.mean + params.stddev * sqrt(-2.0 * log(u1)) * cos(6.283185307 * u2);
}
fn bf16_bits(x: f32) -> u32 {
  let u = bitcast<u32>(x);
  return ((u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u) & 0xffffu;
}`,
    main: `
  let i = flat_index(gid, nwg);
  let n = params.n;
  ${body}`,
  });
});
