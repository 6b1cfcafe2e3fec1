/**
 * The library's browser entry point: the engine, the loader reading a
 * checkpoint by URL, generation with EM-INF and adaptive temperature, and
 * what an EM-FT step needs. No Deno API is in its import graph
 * (tests/web_test.ts checks it); `deno task build:web` bundles it into
 * web/dist/engine.js.
 * @module
 */
export { device, initDevice } from "../engine/device.ts";
export { Tensor } from "../engine/tensor.ts";
export { keep, noGrad, tidy } from "../engine/scope.ts";
export { entropy } from "../engine/ops/mod.ts";
export { AdamW, clipGradNorm } from "../engine/optim.ts";
export { loadModelFromUrl, urlSource } from "../engine/model/url_source.ts";
export { loadFrom } from "../engine/model/load.ts";
export type { CausalLM } from "../engine/model/causal_lm.ts";
export { generate, type GenerateOptions } from "../infer/generate.ts";
export { EM_INF_DEFAULTS, emInfProcessor } from "../infer/em_inf.ts";
export { adaptiveTemperatureProcessor } from "../infer/baselines.ts";
export { emFtObjective } from "../train/em_ft.ts";
export { packSequences, scoredBatch } from "../train/objective.ts";
export { accumulateGradients } from "../train/accumulate.ts";
