/**
 * `deno task train`: EM-FT (or SFT) of a Qwen checkpoint. With no arguments,
 * the embedded demo: EM-FT of the shipped arithmetic model on unlabeled
 * prompts from the task generator, with a before/after table on held-out
 * problems.
 * @module
 */
import { is, numberFlag, parseArgs, type ParsedArgs } from "@std/cli";
import { recoverDirectory } from "../engine/atomic.ts";
import { initDeviceOrExplain } from "../engine/device.ts";
import { loadModel, readConfig, saveModel } from "../engine/model/checkpoint.ts";
import type { CausalLM } from "../engine/model/causal_lm.ts";
import type { DecoderConfig } from "../engine/model/config.ts";
import type { DecoderLM } from "../engine/model/decoder.ts";
import { estimateTraining, type MemoryEstimate, parameterCount } from "./memory.ts";
import { LORA_TARGETS, LoraAdapters, parseLoraTargets } from "../engine/model/lora.ts";
import {
  DEMO_HELD_OUT,
  DEMO_MAX_NEW_TOKENS,
  DEMO_MODEL,
  DEMO_PROMPT_LENGTH,
  heldOutProblems,
} from "../demo/task.ts";
import { accuracy, type DemoScores, evaluateDemo } from "../demo/evaluate.ts";
import {
  checkExampleFits,
  DemoSource,
  encodePrompt,
  type ExampleSource,
  readJsonl,
  ShuffledSource,
} from "./data.ts";
import { REWARD_NAMES } from "./rewards.ts";
import { DEFAULTS, DivergedError, train, type TrainOptions } from "./trainer.ts";

/** Settings of the no-argument demo (see README: chosen to finish in about 5 minutes on 2 CPU cores). */
export const DEMO_DEFAULTS: Partial<TrainOptions> = {
  method: "em-ft",
  steps: 50,
  batchSize: 64,
  nSamples: 4,
  microBatch: 256,
  lr: 3e-5,
  maxNewTokens: DEMO_MAX_NEW_TOKENS,
  temperature: 1,
  topP: 1,
  weightDecay: 0,
  clip: 1,
};

/** EM-RL's demo settings: the EM-FT demo's, with EM-RL's steps (about the same wall time). */
export const DEMO_EM_RL: Partial<TrainOptions> = { steps: 30 };

const HELP = `deno task train [flags]

EM-FT: sample responses to unlabeled prompts from the model, then minimise the
token entropy of its own next-token distributions over the responses.
EM-RL: policy gradient (PPO clip, k3 KL to the initial model) whose reward is
the model's negative entropy, or another reward of --reward.
SFT: cross-entropy on labeled prompt/answer pairs (prompt masked).
With no --model and no --data: the embedded demo (EM-FT, or EM-RL with
--method em-rl, of the shipped arithmetic model, before/after table on
${DEMO_HELD_OUT} held-out problems).

  --method em-ft|em-rl|sft objective (default em-ft)
  --model DIR              Hugging Face Qwen checkpoint directory (default: the demo model)
  --data FILE.jsonl        {"prompt": ..., "answer"?: ...} per line (default: the demo task generator)
  --out DIR                output directory: metrics.jsonl, checkpoint/, best/ (default runs/<method>-<time>)
  --steps N                optimizer steps (default ${DEFAULTS.steps}; demo ${DEMO_DEFAULTS.steps})
  --batch-size N           prompts per step (default ${DEFAULTS.batchSize})
  --n-samples N            EM-FT/EM-RL responses per prompt (default ${DEFAULTS.nSamples})
  --micro-batch N          sequences per forward/backward; gradients accumulate (default ${DEFAULTS.microBatch})
  --recompute              keep only each decoder layer's input for backward and recompute the layer
  --lora-rank R            train LoRA adapters of rank R on a frozen base kept in its stored dtype
  --lora-alpha A           LoRA scale alpha / R (default 2 R)
  --lora-targets LIST      q,k,v,o,gate,up,down (default all); checkpoints are PEFT adapters
  --merge                  with LoRA: also write OUT/merged, the base with the adapters folded in
  --dry-run                print the GPU memory an update needs (from config.json alone) and exit
  --seq-length N           sequence length the estimate assumes (default: the demo's, or 512 + max-new-tokens)
  --memory-limit GB        refuse a run whose estimate exceeds this (default: this machine's memory)
  --lr X                   AdamW learning rate (default ${DEFAULTS.lr})
  --warmup N               linear warm-up steps (default 0)
  --schedule constant|cosine   after warm-up (default constant)
  --weight-decay X         AdamW weight decay (default ${DEFAULTS.weightDecay})
  --clip X                 gradient clipping by global norm (default ${DEFAULTS.clip})
  --reduce mean|sum        EM-FT: mean over response tokens, or sum per sequence (default mean)
EM-RL:
  --reward NAME            ${REWARD_NAMES.join("|")} (default ${DEFAULTS.reward})
                           token: -H per token; sequence: log-prob of the sampled tokens;
                           self-certainty: KL(U||p); majority: agrees with the majority answer;
                           correct: equals the data's "answer" (the labeled RLOO/GRPO baseline)
  --reward-reduce mean|sum token/sequence rewards: mean over tokens (code) or sum (paper) (default mean)
  --estimator rloo|grpo|reinforce   advantage (default ${DEFAULTS.estimator})
  --clip-ratio X           PPO clip epsilon (default ${DEFAULTS.clipRatio})
  --ppo-epochs N           updates per batch of rollouts (default ${DEFAULTS.ppoEpochs})
  --ppo-mini-batch N       prompts per update (default 0 = the whole batch)
  --kl-coef X              k3 KL to the initial model; 0 allocates no reference (default ${DEFAULTS.klCoef})
  --max-new-tokens N       response length limit when sampling (default ${DEFAULTS.maxNewTokens}; demo ${DEMO_MAX_NEW_TOKENS})
  --temperature T          sampling temperature (default 1)
  --top-p P                sampling nucleus mass (default 1)
  --chat                   render prompts with the model's chat template
  --seed N                 random seed (default 0)
  --eval-every N           evaluate every N steps (demo task; default 0 = start and end only)
  --save-every N           checkpoint every N steps (default 0 = at the end)
  --target-accuracy X      demo task: stop once greedy accuracy on the validation set reaches X
  --stop-on-collapse F     with --eval-every: stop once validation accuracy falls below F x its best
  --resume                 continue from OUT/checkpoint with its optimizer state
  --overwrite              replace the run already in OUT (its metrics, checkpoint/ and best/)
  --no-weight-check        skip the NaN/Inf check of the weights at load (one GPU pass over them)
  --help                   this text

An OUT that already holds a run is refused unless --resume or --overwrite is given.`;

/** Flags only EM-RL reads (refused without --method em-rl). */
const EM_RL_FLAGS = [
  "reward",
  "reward-reduce",
  "estimator",
  "clip-ratio",
  "ppo-epochs",
  "ppo-mini-batch",
  "kl-coef",
];

const STRING_FLAGS = [
  "method",
  "model",
  "data",
  "out",
  "steps",
  "batch-size",
  "n-samples",
  "micro-batch",
  "lr",
  "warmup",
  "schedule",
  "weight-decay",
  "clip",
  "reduce",
  "max-new-tokens",
  "temperature",
  "top-p",
  "seed",
  "eval-every",
  "save-every",
  "target-accuracy",
  "stop-on-collapse",
  ...EM_RL_FLAGS,
  "lora-rank",
  "lora-alpha",
  "lora-targets",
  "seq-length",
  "memory-limit",
];

type Flags = ParsedArgs;

function stamp(): string {
  return new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
}

/** Parses flags into options; throws naming the flag. */
export function parseTrainFlags(
  args: string[],
): { options: TrainOptions; flags: Flags; demo: boolean } {
  const flags = parseArgs(args, {
    string: STRING_FLAGS,
    boolean: [
      "chat",
      "resume",
      "overwrite",
      "no-weight-check",
      "recompute",
      "merge",
      "dry-run",
      "help",
    ],
  }) as Flags;
  const demo = flags.model === undefined && flags.data === undefined;
  const method = (flags.method ?? DEFAULTS.method) as string;
  if (method !== "em-ft" && method !== "sft" && method !== "em-rl") {
    throw new Error(`--method must be em-ft, em-rl or sft, got "${method}"`);
  }
  const base: TrainOptions = {
    ...DEFAULTS,
    ...(demo ? DEMO_DEFAULTS : {}),
    ...(demo && method === "em-rl" ? DEMO_EM_RL : {}),
  };
  const choice = <T extends string>(flag: string, allowed: readonly T[], fallback: T): T => {
    const v = (flags[flag] ?? fallback) as string;
    if (!allowed.includes(v as T)) {
      throw new Error(`--${flag} must be ${allowed.join(", ")}, got "${v}"`);
    }
    return v as T;
  };
  const stray = EM_RL_FLAGS.find((f) => flags[f] !== undefined);
  if (method !== "em-rl" && stray) {
    throw new Error(`--${stray} is an EM-RL flag: add --method em-rl`);
  }
  const schedule = (flags.schedule ?? base.schedule) as string;
  if (schedule !== "constant" && schedule !== "cosine") {
    throw new Error(`--schedule must be constant or cosine, got "${schedule}"`);
  }
  const reduce = (flags.reduce ?? base.reduce) as string;
  if (reduce !== "mean" && reduce !== "sum") {
    throw new Error(`--reduce must be mean or sum, got "${reduce}"`);
  }
  const options: TrainOptions = {
    method,
    steps: numberFlag(flags, "steps", is.positiveInt) ?? base.steps,
    batchSize: numberFlag(flags, "batch-size", is.positiveInt) ?? base.batchSize,
    nSamples: numberFlag(flags, "n-samples", is.positiveInt) ?? base.nSamples,
    microBatch: numberFlag(flags, "micro-batch", is.positiveInt) ?? base.microBatch,
    lr: numberFlag(flags, "lr", is.positive) ?? base.lr,
    warmup: numberFlag(flags, "warmup", is.nonNegativeInt) ?? base.warmup,
    schedule,
    weightDecay: numberFlag(flags, "weight-decay", is.nonNegative) ?? base.weightDecay,
    clip: numberFlag(flags, "clip", is.positive) ?? base.clip,
    reduce,
    maxNewTokens: numberFlag(flags, "max-new-tokens", is.positiveInt) ?? base.maxNewTokens,
    temperature: numberFlag(flags, "temperature", is.positive) ?? base.temperature,
    topP: numberFlag(flags, "top-p", is.fraction) ?? base.topP,
    seed: numberFlag(flags, "seed", is.int) ?? base.seed,
    evalEvery: numberFlag(flags, "eval-every", is.nonNegativeInt) ?? base.evalEvery,
    saveEvery: numberFlag(flags, "save-every", is.nonNegativeInt) ?? base.saveEvery,
    stopOnCollapse: numberFlag(flags, "stop-on-collapse", is.fraction) ?? base.stopOnCollapse,
    recompute: flags.recompute === true,
    loraRank: numberFlag(flags, "lora-rank", is.nonNegativeInt) ?? 0,
    loraAlpha: numberFlag(flags, "lora-alpha", is.positive) ??
      2 * (numberFlag(flags, "lora-rank", is.nonNegativeInt) ?? 0),
    loraTargets: parseLoraTargets(
      typeof flags["lora-targets"] === "string" ? flags["lora-targets"] : LORA_TARGETS.join(","),
    ),
    chat: flags.chat === true,
    outDir: typeof flags.out === "string"
      ? flags.out
      : `runs/${method}${demo ? "-demo" : ""}-${stamp()}`,
    reward: choice("reward", REWARD_NAMES, base.reward),
    rewardReduce: choice("reward-reduce", ["mean", "sum"] as const, base.rewardReduce),
    estimator: choice("estimator", ["rloo", "grpo", "reinforce"] as const, base.estimator),
    clipRatio: numberFlag(flags, "clip-ratio", is.positive) ?? base.clipRatio,
    ppoEpochs: numberFlag(flags, "ppo-epochs", is.positiveInt) ?? base.ppoEpochs,
    ppoMiniBatch: numberFlag(flags, "ppo-mini-batch", is.nonNegativeInt) ?? base.ppoMiniBatch,
    klCoef: numberFlag(flags, "kl-coef", is.nonNegative) ?? base.klCoef,
  };
  if (options.method === "em-rl" && options.estimator === "rloo" && options.nSamples < 2) {
    throw new Error(
      "--estimator rloo needs --n-samples >= 2 (it compares each rollout with the others of its prompt)",
    );
  }
  if (
    options.loraRank === 0 &&
    (flags["lora-alpha"] !== undefined || flags["lora-targets"] !== undefined)
  ) {
    throw new Error("--lora-alpha and --lora-targets need --lora-rank R");
  }
  if (flags.merge && options.loraRank === 0 && !flags.resume) {
    throw new Error("--merge folds LoRA adapters into the weights: it needs --lora-rank R");
  }
  if (options.stopOnCollapse > 0 && options.evalEvery === 0) {
    throw new Error("--stop-on-collapse needs --eval-every N (it watches validation accuracy)");
  }
  if (flags.resume && typeof flags.out !== "string") {
    throw new Error("--resume needs --out DIR (the run to continue)");
  }
  if (flags.resume && flags.overwrite) {
    throw new Error("--resume continues the run in --out; --overwrite replaces it: pass one");
  }
  if (flags.resume && flags.model !== undefined) {
    throw new Error("--resume continues from OUT/checkpoint; --model is not used with it");
  }
  numberFlag(flags, "target-accuracy", is.fraction);
  return { options, flags, demo };
}

function table(before: DemoScores, after: DemoScores): string {
  const row = (name: string, a: number, b: number, pct = true) =>
    `| ${name.padEnd(30)} | ${(pct ? (100 * a).toFixed(1) + "%" : a.toFixed(3)).padStart(7)} | ${
      (pct ? (100 * b).toFixed(1) + "%" : b.toFixed(3)).padStart(7)
    } |`;
  return [
    `| ${("held-out problems: " + DEMO_HELD_OUT).padEnd(30)} | before  | after   |`,
    "| ------------------------------ | ------- | ------- |",
    row("accuracy, greedy", before.greedyAccuracy, after.greedyAccuracy),
    row("accuracy, sampling T=1", before.sampleAccuracy, after.sampleAccuracy),
    row("mean token entropy (nats)", before.entropy, after.entropy, false),
  ].join("\n");
}

/** What a run leaves in its output directory. */
const RUN_FILES = ["metrics.jsonl", "checkpoint", "best"];

const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;

/** Total system memory in bytes, or null without the permission to read it. */
function systemMemory(): number | null {
  const state = Deno.permissions.querySync({ name: "sys", kind: "systemMemoryInfo" }).state;
  return state === "granted" ? Deno.systemMemoryInfo().total : null;
}

/** The estimate of an update's GPU memory for these flags, and the limit it must fit. */
async function memoryPlan(
  modelDir: string,
  o: TrainOptions,
  flags: ParsedArgs,
  demoTask: boolean,
): Promise<{ config: DecoderConfig; estimate: MemoryEstimate; limit: number }> {
  const config = await readConfig(modelDir);
  // the demo's sequences are known; otherwise a 512-token prompt allowance (or --seq-length)
  const seqLength = numberFlag(flags, "seq-length", is.positiveInt) ??
    Math.min(config.maxPositionEmbeddings, (demoTask ? DEMO_PROMPT_LENGTH : 512) + o.maxNewTokens);
  const lora = o.loraRank > 0 ? { rank: o.loraRank, targets: o.loraTargets } : null;
  const estimate = estimateTraining(config, {
    microBatch: o.microBatch,
    seqLength,
    scored: o.microBatch * Math.min(o.maxNewTokens, seqLength),
    weightBytes: lora && config.raw.torch_dtype !== "float32" && config.raw.dtype !== "float32"
      ? 2
      : 4,
    lora,
    recompute: o.recompute,
    reference: o.method === "em-rl" && o.klCoef > 0,
    maxBinding: 128 * 2 ** 20,
  });
  // WebGPU reports no device memory size: by default, this machine's memory (a CPU adapter's)
  const limitGb = numberFlag(flags, "memory-limit", is.positive);
  // (when the process may read it: deno task train allows it; otherwise no limit)
  const limit = limitGb !== undefined ? limitGb * 2 ** 30 : systemMemory() ?? Infinity;
  return { config, estimate, limit };
}

/** What --dry-run prints: the estimate by category, and whether it fits 16 and 24 GB. */
function dryRunReport(c: DecoderConfig, e: MemoryEstimate, dir: string, o: TrainOptions): string {
  const lines = [
    `dry run: ${dir} (${c.architecture}, ${
      (parameterCount(c) / 1e9).toFixed(2)
    }B parameters), ${o.method}, micro-batch ${o.microBatch}${
      o.loraRank ? `, LoRA rank ${o.loraRank}` : ", full fine-tuning"
    }${o.recompute ? ", --recompute" : ""}`,
    `  weights      ${gib(e.weights)}`,
    `  LoRA         ${gib(e.adapters)}`,
    `  gradients    ${gib(e.gradients)}`,
    `  optimizer    ${gib(e.optimizer)}`,
    `  reference    ${gib(e.reference)}`,
    `  activations  ${gib(e.activations)} (one micro-batch, kept for backward)`,
    `  total        ${gib(e.total)}`,
  ];
  for (const gb of [16, 24]) {
    lines.push(`  fits in ${gb} GB: ${e.total <= gb * 1e9 ? "yes" : "no"}`);
  }
  return lines.join("\n");
}

async function exists(path: string): Promise<boolean> {
  return (await pathKind(path)) !== null;
}

async function pathKind(path: string): Promise<"file" | "dir" | null> {
  try {
    return (await Deno.stat(path)).isDirectory ? "dir" : "file";
  } catch {
    return null; // missing, or under a file: creating it will say which
  }
}

/** The absolute form of a path that may not exist yet (its nearest existing ancestor resolved). */
async function resolvePath(path: string): Promise<string> {
  const abs = path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
  const parts = abs.split("/").filter((p) => p && p !== ".");
  for (let i = parts.length; i >= 0; i--) {
    try {
      const real = await Deno.realPath("/" + parts.slice(0, i).join("/"));
      return [real.replace(/\/$/, ""), ...parts.slice(i)].join("/");
    } catch { /* go up */ }
  }
  return abs;
}

/**
 * Checks --out and --model before anything is loaded or trained: OUT must be a
 * writable directory; a run already in it is continued (--resume), replaced
 * (--overwrite) or refused; the model must not live inside OUT, whose
 * checkpoints this run replaces. Returns an error message, or null.
 */
export async function prepareOutDir(
  out: string,
  modelDir: string | null,
  flags: { resume?: boolean; overwrite?: boolean },
): Promise<string | null> {
  const kind = await pathKind(out);
  if (kind === "file") return `--out ${out} is a file; pass a directory`;
  try {
    await Deno.mkdir(out, { recursive: true });
    const probe = `${out}/.write-test-${Deno.pid}`;
    await Deno.writeTextFile(probe, "");
    await Deno.remove(probe);
  } catch (e) {
    return `--out ${out}: cannot write there (${(e as Error).message})`;
  }
  if (modelDir !== null) {
    const [m, o] = [await resolvePath(modelDir), await resolvePath(out)];
    if (m === o || m.startsWith(o + "/")) {
      return `--model ${modelDir} lies inside --out ${out}, whose checkpoints this run replaces; copy the model elsewhere or pass another --out`;
    }
  }
  const held: string[] = [];
  for (const name of RUN_FILES) if (await pathKind(`${out}/${name}`)) held.push(name);
  for await (const e of Deno.readDir(out)) {
    if (/^(checkpoint|best)\.(new|old)-/.test(e.name)) held.push(e.name);
  }
  if (flags.resume || held.length === 0) return null;
  if (!flags.overwrite) {
    return `--out ${out} already holds a run (${
      held.join(", ")
    }): pass --resume to continue it, a new --out, or --overwrite to replace it`;
  }
  for (const name of held) await Deno.remove(`${out}/${name}`, { recursive: true });
  return null;
}

export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseTrainFlags(args);
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n\nRun with --help for the flags.`);
    return 2;
  }
  const { options, flags, demo } = parsed;
  if (flags.help) {
    console.log(HELP);
    return 0;
  }
  const modelFlag = typeof flags.model === "string" ? flags.model : null;
  // the memory an update needs, from config.json alone: printed by --dry-run, checked before loading
  let plan: { config: DecoderConfig; estimate: MemoryEstimate; limit: number };
  try {
    plan = await memoryPlan(
      modelFlag ?? DEMO_MODEL,
      options,
      flags,
      demo || flags.data === undefined,
    );
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    return 1;
  }
  if (flags["dry-run"]) {
    console.log(dryRunReport(plan.config, plan.estimate, modelFlag ?? DEMO_MODEL, options));
    return 0;
  }
  if (plan.estimate.total > plan.limit) {
    console.error(
      `error: this update needs about ${
        gib(plan.estimate.total)
      } of GPU memory (--dry-run shows why), more than the ${
        gib(plan.limit)
      } available (--memory-limit); lower --micro-batch, add --recompute, or train LoRA adapters with --lora-rank`,
    );
    return 2;
  }
  const outProblem = await prepareOutDir(options.outDir, modelFlag, {
    resume: flags.resume === true,
    overwrite: flags.overwrite === true,
  });
  if (outProblem) {
    console.error(`error: ${outProblem}`);
    return 2;
  }
  const dev = await initDeviceOrExplain();
  if (!dev) return 1;
  console.log(`device: ${dev.info.description}`);
  const useDemoTask = flags.data === undefined;
  const checkpointDir = `${options.outDir}/checkpoint`;
  let model: CausalLM;
  let source: ExampleSource;
  try {
    if (flags.resume) {
      const back = await recoverDirectory(checkpointDir);
      if (back) console.log(`recovered ${checkpointDir} from ${back} (a save was interrupted)`);
      try {
        await Deno.stat(`${checkpointDir}/trainer_state.json`);
      } catch {
        throw new Error(
          `--resume: ${checkpointDir}/trainer_state.json not found (no checkpoint to resume)`,
        );
      }
    }
    const modelDir = flags.resume ? checkpointDir : modelFlag ?? DEMO_MODEL;
    // LoRA: a resumed run's checkpoint holds adapters; its base is named in trainer_state.json
    let adapterDir: string | null = null;
    let baseDir = modelDir;
    if (flags.resume && await exists(`${checkpointDir}/adapter_config.json`)) {
      const state = JSON.parse(await Deno.readTextFile(`${checkpointDir}/trainer_state.json`));
      adapterDir = checkpointDir;
      baseDir = state.loraBase;
    }
    const lora = adapterDir !== null || options.loraRank > 0;
    model = await loadModel(baseDir, {
      // with LoRA the base stays frozen in its stored precision
      trainable: !lora,
      checkFinite: !flags["no-weight-check"],
    });
    if (adapterDir) {
      (model as DecoderLM).setAdapters(await LoraAdapters.load(adapterDir, model.config));
    } else if (lora) {
      (model as DecoderLM).setAdapters(LoraAdapters.create(model.config, {
        rank: options.loraRank,
        alpha: options.loraAlpha,
        targets: options.loraTargets,
        seed: options.seed,
      }));
    }
    if (!model.tokenizer) {
      throw new Error(`${modelDir}/tokenizer.json not found: training needs the model's tokenizer`);
    }
    if (useDemoTask) {
      if (model.config.vocabSize !== 15) {
        throw new Error(
          `the demo task needs the demo vocabulary (15 tokens); ${modelDir} has vocab_size ${model.config.vocabSize}. Pass --data FILE.jsonl`,
        );
      }
      source = new DemoSource(options.seed);
    } else {
      const examples = await readJsonl(flags.data as string, {
        requireAnswer: options.method === "sft" ||
          (options.method === "em-rl" && options.reward === "correct"),
      });
      // every line must fit the model before the first step, not fail at step 40
      for (const e of examples) {
        const ids = encodePrompt(model.tokenizer, e.prompt, options.chat);
        const answer = options.method === "sft"
          ? model.tokenizer.encode(e.answer ?? "").length + 1
          : 0;
        checkExampleFits(e, ids, answer, model.config.maxPositionEmbeddings);
      }
      source = new ShuffledSource(flags.data as string, examples, options.seed);
    }
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    return 1;
  }
  const target = flags["target-accuracy"] === undefined ? null : Number(flags["target-accuracy"]);
  const validation = heldOutProblems(DEMO_HELD_OUT).slice(0, 200);
  const heldOut = heldOutProblems(DEMO_HELD_OUT);
  let before: DemoScores | null = null;
  if (demo && !flags.resume) {
    console.log(
      `demo: ${options.method.toUpperCase()} of ${DEMO_MODEL} on ${
        options.method === "sft" || (options.method === "em-rl" && options.reward === "correct")
          ? "labeled"
          : "unlabeled"
      } arithmetic prompts; evaluating on ${DEMO_HELD_OUT} held-out problems first`,
    );
    before = await evaluateDemo(model, heldOut, options.seed);
  }
  console.log(
    `${options.method} for ${options.steps} steps: ${options.batchSize} prompts/step` +
      (options.method !== "sft" ? ` x ${options.nSamples} samples` : "") +
      (options.method === "em-rl"
        ? `, reward ${options.reward} (${options.rewardReduce}), ${options.estimator}, kl ${options.klCoef}`
        : "") +
      `, lr ${options.lr}, output ${options.outDir}`,
  );
  try {
    const result = await train(model, source, options, {
      evaluate: useDemoTask && (options.evalEvery > 0 || target !== null)
        ? async (m) => {
          const g = await accuracy(m, validation, { greedy: true, returnEntropies: true });
          const out: Record<string, number> = {
            greedyAccuracy: g.accuracy,
            entropy: g.entropy,
            score: g.accuracy,
          };
          if (target !== null && g.accuracy >= target) out.stop = 1;
          return out;
        }
        : undefined,
    }, flags.resume ? checkpointDir : null);
    console.log(
      `checkpoint: ${result.checkpoint}${
        result.best ? `; best (step ${result.best.step}): ${result.best.dir}` : ""
      }`,
    );
    if (flags.merge) {
      const merged = `${options.outDir}/merged`;
      await saveModel(model, merged, { merge: true, copyFrom: model.sourceDir });
      console.log(`merged checkpoint (base + LoRA): ${merged}`);
    }
    if (before) {
      const after = await evaluateDemo(model, heldOut, options.seed);
      console.log(`\n${table(before, after)}\n`);
      const tps = result.history.reduce((s, h) => s + h.tokens, 0) /
        result.history.reduce((s, h) => s + h.seconds, 0);
      console.log(`training throughput: ${tps.toFixed(0)} tokens/s (sampling included)`);
    }
  } catch (e) {
    if (e instanceof DivergedError) {
      console.error(`error: ${e.message}`);
      return 1;
    }
    throw e;
  } finally {
    model.dispose();
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
