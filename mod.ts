/**
 * A tensor engine with tape autograd whose kernels are WGSL run through
 * WebGPU, for entropy minimization of Qwen models.
 *
 * @example Generate with a Hugging Face Qwen checkpoint (here the shipped demo model)
 * ```ts
 * import { emInfProcessor, generate, initDevice, loadModel } from "./mod.ts";
 *
 * await initDevice();
 * const model = await loadModel("./demo/model"); // config.json, safetensors, tokenizer.json
 * const tok = model.tokenizer!;
 * const out = await generate(model, [tok.encode("537+268=")], {
 *   maxNewTokens: 5,
 *   temperature: 1,
 *   logitsProcessor: emInfProcessor(), // EM-INF at every step
 * });
 * console.log(tok.decode(out.tokens[0], { skipSpecialTokens: true }));
 * ```
 *
 * @example Autograd
 * ```ts
 * import { initDevice, matmul, sum, Tensor, tidy } from "./mod.ts";
 *
 * await initDevice();
 * const w = Tensor.randn([3, 2], { seed: 1, requiresGrad: true });
 * const x = Tensor.from([1, 2, 3, 4, 5, 6], [2, 3]);
 * const loss = tidy(() => {
 *   const l = sum(matmul(x, w));
 *   l.backward();
 *   return l;
 * });
 * console.log(await loss.item(), await w.grad!.toArray());
 * ```
 * @module
 */
export {
  Device,
  device,
  DeviceError,
  initDevice,
  WebGPUUnavailableError,
} from "./engine/device.ts";
export type { DeviceInfo } from "./engine/device.ts";
export { type DType, numel, Tensor, type TensorOptions } from "./engine/tensor.ts";
export { keep, noGrad, tidy } from "./engine/scope.ts";
export { backward } from "./engine/autograd.ts";
export * from "./engine/ops/mod.ts";
export { AdamW, type AdamWOptions, clipGradNorm } from "./engine/optim.ts";
export { loadOptimizer, saveOptimizer } from "./engine/optim_files.ts";
export { Rng } from "./engine/random.ts";
export * from "./engine/safetensors.ts";
export { tensorFromRaw, tensorToRaw } from "./engine/tensor_io.ts";
export { Checkpoint } from "./engine/model/shards.ts";
export {
  type CausalLM,
  type ForwardOptions,
  type GenerationDefaults,
  type Parameter,
  parameterBytes,
} from "./engine/model/causal_lm.ts";
export {
  ConfigError,
  type DecoderConfig,
  decoderParameters,
  type LayerNames,
  LINEAR_LAYERS,
  type LinearName,
  linearShapes,
  parameterCount,
  type TensorNames,
} from "./engine/model/config.ts";
export { DecoderLM, positionsFromMask } from "./engine/model/decoder.ts";
export { KVCache } from "./engine/model/kv_cache.ts";
export { frozenCopy, randomModel } from "./engine/model/init.ts";
/** The type of a loaded Qwen model: the generic decoder's interface. */
export type { CausalLM as QwenModel } from "./engine/model/causal_lm.ts";
export { parseQwenConfig, QWEN_NAMES, type QwenConfig } from "./engine/model/qwen.ts";
export {
  type Adapter,
  LORA_TARGETS,
  LoraAdapters,
  type LoraOptions,
  type LoraTarget,
  withLora,
} from "./engine/model/lora.ts";
export { checkpoint } from "./engine/autograd.ts";
export {
  dirSource,
  loadModel,
  type LoadOptions,
  loadTokenizer,
  parseConfig,
  readConfig,
  saveModel,
} from "./engine/model/checkpoint.ts";
export { loadFrom, tokenizerFrom } from "./engine/model/load.ts";
export { type CheckpointSource, readJsonObject } from "./engine/model/source.ts";
export { loadModelFromUrl, urlSource } from "./engine/model/url_source.ts";
export { type ChatMessage, QwenTokenizer } from "./engine/model/tokenizer.ts";
export {
  dequantizeMatrix,
  type PackedMatrix,
  QUANT_SCHEMES,
  type QuantBits,
  quantizeMatrix,
  type QuantScheme,
} from "./engine/quant/format.ts";
export { QuantizedWeight } from "./engine/quant/weight.ts";
export { quantizeModel } from "./engine/quant/model.ts";
export { type CheckpointQuant, parseQuantizationConfig } from "./engine/quant/checkpoints.ts";
export { quantLinear, quantLinearReference } from "./engine/ops/quant_matmul.ts";
export {
  inferenceDryRun,
  type InferenceMemory,
  inferenceMemory,
  inferenceReport,
} from "./infer/memory.ts";
export { attentionBias, composedAttention, linear, rmsNorm, ropeTables } from "./engine/nn.ts";
export {
  generate,
  type GenerateOptions,
  type GenerateResult,
  leftPad,
  NonFiniteLogitsError,
} from "./infer/generate.ts";
export {
  type NonFiniteReport,
  sampleReference,
  sampleTokens,
  type SamplingOptions,
} from "./infer/sampling.ts";
export {
  emFt,
  emFtObjective,
  type EmFtOptions,
  type Reduce,
  responseMask,
  tokenEntropyLoss,
} from "./train/em_ft.ts";
export { sft, sftObjective } from "./train/sft.ts";
export { advantages, type Estimator, ESTIMATORS, type EstimatorSpec } from "./train/estimators.ts";
export { emRl, emRlObjective, type EmRlOptions, klK3, ppoClipLoss } from "./train/em_rl.ts";
export { rolloutMismatch, scorePositions, truncatedImportanceWeights } from "./train/scoring.ts";
export {
  RolloutError,
  type RolloutServerOptions,
  RolloutServers,
  type ServerKind,
} from "./train/rollout_servers.ts";
export { localSampler, type Sampled, type Sampler, type SampleRequest } from "./infer/sampler.ts";
export {
  answerOf,
  type RewardName,
  type RewardReduce,
  REWARDS,
  type RewardSpec,
  type Rollout,
} from "./train/rewards.ts";
export { type MethodName, METHODS } from "./train/methods.ts";
export {
  type BatchContext,
  type Method,
  type Objective,
  type ObjectiveSetup,
  packSequences,
  type PositionInputs,
  type PositionLoss,
  type StepBatch,
} from "./train/objective.ts";
export { accumulateGradients } from "./train/accumulate.ts";
export { DEFAULTS as TRAIN_DEFAULTS, learningRate, type TrainOptions } from "./train/options.ts";
export {
  DivergedError,
  type StepMetrics,
  train,
  type TrainHooks,
  type TrainResult,
} from "./train/trainer.ts";
export { type Example, type ExampleSource, ShuffledSource } from "./train/data.ts";
export { readExamples, readJsonl } from "./train/data_files.ts";
export {
  EM_INF_DEFAULTS,
  emInfAdjust,
  emInfAdjustTensor,
  type EmInfOptions,
  emInfProcessor,
  emInfReference,
} from "./infer/em_inf.ts";
export {
  adaptiveTemperature,
  type AdaptiveTemperatureOptions,
  adaptiveTemperatureProcessor,
  adaptiveTemperatureReference,
} from "./infer/baselines.ts";
export { majorityVote } from "./infer/answer.ts";
export {
  answersMatch,
  extractAnswer,
  lastBoxed,
  normalizeAnswer,
  numericValue,
} from "./infer/answer.ts";
export {
  type EvalMethod,
  type EvalOptions,
  type EvalProblem,
  evaluate,
  MATH_INSTRUCTION,
  type MethodSummary,
  scoreResponses,
  summaryTable,
} from "./infer/eval.ts";
export { type Score, type ScoreOptions, type Task, type TaskName, TASKS } from "./infer/tasks.ts";
export {
  type CodeProblem,
  type CodeResult,
  extractProgram,
  normalizeOutput,
  passAtK,
  scoreCode,
  type Verdict,
} from "./infer/code.ts";
export {
  DEFAULT_LIMITS,
  type Program,
  type RunResult,
  runSandboxed,
  type SandboxLimits,
} from "./infer/sandbox.ts";
export {
  choiceLetter,
  extractScienceAnswer,
  parseQuantity,
  type Quantity,
  scienceMatch,
} from "./infer/science.ts";
export {
  type ChoiceEvent,
  Engine,
  type EngineOptions,
  type GenerationRequest,
  QueueFullError,
  type SamplingParams,
  type TokenInfo,
} from "./infer/serve/engine.ts";
export { createHandler, type ServerOptions } from "./infer/serve/http.ts";
export { sampleTokensPerRow } from "./infer/sampling.ts";
