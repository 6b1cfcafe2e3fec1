/**
 * `deno task train`'s flags: the help text (its method, reward and
 * estimator lists come from their registries), parsing into TrainOptions,
 * and the checks between flags, each error naming the flag.
 * @module
 */
import { is, numberFlag, parseArgs, type ParsedArgs, quantizeFlag } from "@std/cli";
import { LORA_TARGETS, parseLoraTargets } from "../engine/model/lora.ts";
import { DEMO_DEFAULTS, DEMO_STEPS } from "../demo/training.ts";
import { DEMO_HELD_OUT, DEMO_MAX_NEW_TOKENS } from "../demo/task.ts";
import { ESTIMATOR_NAMES, ESTIMATORS } from "./estimators.ts";
import { METHOD_NAMES, METHODS } from "./methods.ts";
import { DEFAULTS, type TrainOptions } from "./options.ts";
import { REWARD_NAMES, REWARDS } from "./rewards.ts";

/** `name  summary` lines of a registry, aligned. */
function listing(entries: [string, { summary: string }][], indent: number): string {
  const width = Math.max(...entries.map(([n]) => n.length)) + 2;
  return entries.map(([n, e]) => " ".repeat(indent) + n.padEnd(width) + e.summary).join("\n");
}

export const HELP = `deno task train [flags]

Trains a Qwen checkpoint with one of these methods (--method):
${listing(Object.entries(METHODS), 2)}
With no --model and no --data: the embedded demo (the shipped arithmetic
model on its task generator, before/after table on ${DEMO_HELD_OUT} held-out problems).

  --method ${METHOD_NAMES.join("|")}   objective (default ${DEFAULTS.method})
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
  --lora-targets LIST      ${LORA_TARGETS.join(",")} (default all); checkpoints are PEFT adapters
  --quantize int4|int8     with LoRA: quantize the frozen base's linear layers at load (QLoRA);
                           a GPTQ/AWQ checkpoint as --model is quantized already
  --merge                  with LoRA: also write OUT/merged, the base with the adapters folded in
                           (bf16 when the base is quantized)
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
  --reward NAME            (default ${DEFAULTS.reward})
${listing(Object.entries(REWARDS), 27)}
  --reward-reduce mean|sum token/sequence rewards: mean over tokens (code) or sum (paper) (default mean)
  --estimator NAME         advantage (default ${DEFAULTS.estimator})
${listing(Object.entries(ESTIMATORS), 27)}
  --clip-ratio X           PPO clip epsilon (default ${DEFAULTS.clipRatio})
  --ppo-epochs N           updates per batch of rollouts (default ${DEFAULTS.ppoEpochs})
  --ppo-mini-batch N       prompts per update (default 0 = the whole batch)
  --kl-coef X              k3 KL to the initial model; 0 allocates no reference (default ${DEFAULTS.klCoef})
Sampling and evaluation:
  --max-new-tokens N       response length limit when sampling (default ${DEFAULTS.maxNewTokens}; demo ${DEMO_MAX_NEW_TOKENS})
  --temperature T          sampling temperature (default 1)
  --top-p P                sampling nucleus mass (default 1)
  --chat                   render prompts with the model's chat template
  --seed N                 random seed (default 0)
  --eval-data FILE.jsonl   held-out {"prompt" (or "problem"), "answer"} lines to evaluate on
                           (greedy accuracy; the demo uses its own validation problems)
  --eval-every N           evaluate every N steps (default 0 = start and end only)
  --save-every N           checkpoint every N steps (default 0 = at the end)
  --target-accuracy X      stop once greedy validation accuracy reaches X
  --stop-on-collapse F     with --eval-every: stop once validation accuracy falls below F x its best
Rollouts from inference servers (EM-FT, EM-RL; README "Scaling out"):
  --rollout-server URLS    comma-separated OpenAI-compatible servers (vLLM, SGLang, deno task serve)
                           that sample the rollouts and validation; the trainer scores and updates
  --sync-dir DIR           where the weights are written for the servers after each update: LoRA
                           adapters, loaded under a new name each step; full fine-tuning's
                           checkpoint, reloaded by SGLang (default OUT/sync)
  --async-rollouts         sample step k+1's rollouts while step k updates (one step off-policy)
  --tis-cap C              EM-RL: weight each token's policy gradient by min(p_trainer / p_rollout, C)
  --rollout-timeout S      seconds a request may take before it is retried elsewhere (default 600)
  --rollout-retries N      further attempts of a failed request (default 3)
  --rollout-api-key KEY    sent as "Authorization: Bearer KEY" (default: $OPENAI_API_KEY, if set)
  --resume                 continue the run in OUT as it was recorded (OUT/checkpoint); only
                           --steps, --save-every, --eval-every, --eval-data, --target-accuracy,
                           --stop-on-collapse, --micro-batch, --recompute and the rollout servers
                           (--async-rollouts included) may differ
  --overwrite              replace the run already in OUT (its metrics, checkpoint/ and best/)
  --no-weight-check        skip the NaN/Inf check of the weights at load (one GPU pass over them)
  --help                   this text

An OUT that already holds a run is refused unless --resume or --overwrite is given; one trainer
at a time writes to an OUT (OUT/.lock). Ctrl-C (SIGINT) or SIGTERM finishes the current step,
saves a checkpoint and exits with status 130; a second signal exits at once.`;

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
  "eval-data",
  ...EM_RL_FLAGS,
  "lora-rank",
  "lora-alpha",
  "lora-targets",
  "seq-length",
  "memory-limit",
  "rollout-server",
  "sync-dir",
  "tis-cap",
  "rollout-timeout",
  "rollout-retries",
  "rollout-api-key",
  "quantize",
];

const BOOLEAN_FLAGS = [
  "chat",
  "resume",
  "overwrite",
  "no-weight-check",
  "recompute",
  "merge",
  "dry-run",
  "async-rollouts",
  "help",
];

function stamp(): string {
  return new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
}

/**
 * Parses flags into options; throws naming the flag. `demo`: no --model and
 * no --data. With --resume the checks between flags are left to the record
 * (cli_resume.ts). `warnings`: legitimate but surprising combinations.
 */
export function parseTrainFlags(
  args: string[],
): { options: TrainOptions; flags: ParsedArgs; demo: boolean; warnings: string[] } {
  const flags = parseArgs(args, { string: STRING_FLAGS, boolean: BOOLEAN_FLAGS });
  const demo = flags.model === undefined && flags.data === undefined;
  const choice = <T extends string>(flag: string, allowed: readonly T[], fallback: T): T => {
    const v = (flags[flag] ?? fallback) as string;
    if (!allowed.includes(v as T)) {
      const last = allowed.length - 1;
      throw new Error(
        `--${flag} must be ${allowed.slice(0, last).join(", ")} or ${allowed[last]}, got "${v}"`,
      );
    }
    return v as T;
  };
  const method = choice("method", METHOD_NAMES, DEFAULTS.method);
  const base: TrainOptions = {
    ...DEFAULTS,
    ...(demo ? { ...DEMO_DEFAULTS, steps: DEMO_STEPS[method] ?? DEMO_DEFAULTS.steps } : {}),
  };
  const resume = flags.resume === true;
  const stray = EM_RL_FLAGS.find((f) => flags[f] !== undefined);
  if (method !== "em-rl" && stray && !resume) {
    throw new Error(`--${stray} is an EM-RL flag: add --method em-rl`);
  }
  const rank = numberFlag(flags, "lora-rank", is.nonNegativeInt) ?? 0;
  const options: TrainOptions = {
    method,
    steps: numberFlag(flags, "steps", is.positiveInt) ?? base.steps,
    batchSize: numberFlag(flags, "batch-size", is.positiveInt) ?? base.batchSize,
    nSamples: numberFlag(flags, "n-samples", is.positiveInt) ?? base.nSamples,
    microBatch: numberFlag(flags, "micro-batch", is.positiveInt) ?? base.microBatch,
    lr: numberFlag(flags, "lr", is.positive) ?? base.lr,
    warmup: numberFlag(flags, "warmup", is.nonNegativeInt) ?? base.warmup,
    schedule: choice("schedule", ["constant", "cosine"] as const, base.schedule),
    weightDecay: numberFlag(flags, "weight-decay", is.nonNegative) ?? base.weightDecay,
    clip: numberFlag(flags, "clip", is.positive) ?? base.clip,
    reduce: choice("reduce", ["mean", "sum"] as const, base.reduce),
    maxNewTokens: numberFlag(flags, "max-new-tokens", is.positiveInt) ?? base.maxNewTokens,
    temperature: numberFlag(flags, "temperature", is.positive) ?? base.temperature,
    topP: numberFlag(flags, "top-p", is.fraction) ?? base.topP,
    seed: numberFlag(flags, "seed", is.int) ?? base.seed,
    evalEvery: numberFlag(flags, "eval-every", is.nonNegativeInt) ?? base.evalEvery,
    saveEvery: numberFlag(flags, "save-every", is.nonNegativeInt) ?? base.saveEvery,
    stopOnCollapse: numberFlag(flags, "stop-on-collapse", is.fraction) ?? base.stopOnCollapse,
    recompute: flags.recompute === true,
    loraRank: rank,
    loraAlpha: numberFlag(flags, "lora-alpha", is.positive) ?? 2 * rank,
    loraTargets: parseLoraTargets(
      typeof flags["lora-targets"] === "string" ? flags["lora-targets"] : LORA_TARGETS.join(","),
    ),
    chat: flags.chat === true,
    outDir: typeof flags.out === "string"
      ? flags.out
      : `runs/${method}${demo ? "-demo" : ""}-${stamp()}`,
    reward: choice("reward", REWARD_NAMES, base.reward),
    rewardReduce: choice("reward-reduce", ["mean", "sum"] as const, base.rewardReduce),
    estimator: choice("estimator", ESTIMATOR_NAMES, base.estimator),
    clipRatio: numberFlag(flags, "clip-ratio", is.positive) ?? base.clipRatio,
    ppoEpochs: numberFlag(flags, "ppo-epochs", is.positiveInt) ?? base.ppoEpochs,
    ppoMiniBatch: numberFlag(flags, "ppo-mini-batch", is.nonNegativeInt) ?? base.ppoMiniBatch,
    klCoef: numberFlag(flags, "kl-coef", is.nonNegative) ?? base.klCoef,
    tisCap: numberFlag(flags, "tis-cap", is.positive) ?? base.tisCap,
    asyncRollouts: flags["async-rollouts"] === true,
    quantize: quantizeFlag(flags) ?? null,
  };
  const warnings: string[] = [];
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
  numberFlag(flags, "rollout-timeout", is.positive);
  numberFlag(flags, "rollout-retries", is.nonNegativeInt);
  const servers = flags["rollout-server"] !== undefined;
  const needsServers = [
    "sync-dir",
    "async-rollouts",
    "tis-cap",
    "rollout-timeout",
    "rollout-retries",
  ]
    .find((f) => flags[f] !== undefined && flags[f] !== false);
  if (needsServers && !servers) {
    throw new Error(`--${needsServers} is about rollouts from servers: add --rollout-server URL`);
  }
  if (servers && !METHODS[method].samples) {
    throw new Error(`--rollout-server samples rollouts; --method ${method} samples nothing`);
  }
  if (resume) return { options, flags, demo, warnings }; // the record decides the rest
  if (flags["tis-cap"] !== undefined && method !== "em-rl") {
    throw new Error(
      `--tis-cap weights EM-RL's policy gradient; ${method}'s loss does not depend on which token was sampled`,
    );
  }
  const problem = METHODS[method].problem?.(options, options.batchSize);
  if (problem) throw new Error(problem);
  if (rank === 0 && (flags["lora-alpha"] !== undefined || flags["lora-targets"] !== undefined)) {
    throw new Error("--lora-alpha and --lora-targets need --lora-rank R");
  }
  if (options.quantize && rank === 0) {
    throw new Error(
      "--quantize freezes the base's weights as integers: train LoRA adapters on it (--lora-rank R)",
    );
  }
  if (flags.merge && rank === 0) {
    throw new Error("--merge folds LoRA adapters into the weights: it needs --lora-rank R");
  }
  if (options.stopOnCollapse > 0 && options.evalEvery === 0) {
    throw new Error("--stop-on-collapse needs --eval-every N (it watches validation accuracy)");
  }
  const evaluates = ["eval-every", "stop-on-collapse", "target-accuracy"]
    .find((f) => flags[f] !== undefined && flags[f] !== "0");
  if (evaluates && flags.data !== undefined && flags["eval-data"] === undefined) {
    throw new Error(
      `--${evaluates} evaluates on held-out problems: with --data, also pass --eval-data FILE.jsonl (problems with answers)`,
    );
  }
  if (!METHODS[method].samples) {
    const unused = ["n-samples", "temperature", "top-p"]
      .filter((f) => flags[f] !== undefined);
    if (unused.length) {
      warnings.push(
        `--method ${method} samples nothing: ${unused.map((f) => `--${f}`).join(", ")} ignored`,
      );
    }
  }
  return { options, flags, demo, warnings };
}
