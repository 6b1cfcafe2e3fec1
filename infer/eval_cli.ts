/**
 * `deno task eval`: compare decoding methods on a dataset of math, science
 * or code problems, or score responses saved by any tool (--score). With no
 * arguments, the embedded demo model on its held-out arithmetic problems.
 * @module
 */
import { is, numberFlag, parseArgs, type ParsedArgs, quantizeFlag } from "@std/cli";
import { initDeviceOrExplain } from "../engine/device.ts";
import { readJsonlRecords } from "../engine/jsonl.ts";
import { atomicWriteText } from "../engine/atomic.ts";
import { parentOf, pathKind } from "../engine/paths.ts";
import { evalReportHtml } from "../report/eval_report.ts";
import { loadModel } from "../engine/model/checkpoint.ts";
import { checkEncodable } from "../engine/model/tokenizer.ts";
import { DEMO_HELD_OUT, DEMO_MAX_NEW_TOKENS, DEMO_MODEL, heldOutProblems } from "../demo/task.ts";
import type { AnswerFormat } from "./answer.ts";
import { EM_INF_DEFAULTS } from "./em_inf.ts";
import {
  type EvalMethod,
  type EvalOptions,
  type EvalProblem,
  evaluate,
  METHODS,
  scoreResponses,
  summaryTable,
} from "./eval.ts";
import { DEFAULT_LIMITS, sandboxProblem, sandboxTools } from "./sandbox.ts";
import { TASK_NAMES, type TaskName, TASKS } from "./tasks.ts";

const HELP = `deno task eval [flags]

Decodes every problem with each method and compares accuracy and cost, or
scores responses already generated (--score). With no --model and no --data:
the demo model on ${DEMO_HELD_OUT} held-out arithmetic problems.

  --model DIR               Qwen checkpoint or PEFT adapter directory (default: the demo model)
  --data FILE.jsonl         problems of the task, one per line (default: demo problems)
  --task NAME               what is scored (default math):
${
  TASK_NAMES.map((t) => `                              ${t.padEnd(8)} ${TASKS[t].summary}`).join(
    "\n",
  )
}
  --methods LIST            comma-separated: ${METHODS.join(",")} (default: all)
  --k N                     self-consistency samples (default 4); code: samples per method, for pass@k
  --refine-rounds R         refine: rounds of "check and improve" after the first answer (default 2)
  --temperature T           sampling temperature (default 1)
  --top-p P                 nucleus mass (default 1)
  --max-new-tokens N        response limit (default 1024; demo ${DEMO_MAX_NEW_TOKENS})
  --batch-size N            sequences decoded together (default 64; demo 500)
  --limit N                 evaluate the first N problems
  --format boxed|raw        math: answer = last \\boxed{} (default), or the whole response (demo)
  --rtol X                  science: relative tolerance of numeric answers (default 0.01)
  --chat / --no-chat        chat template with the instruction as system message (default: on when the model has one)
  --em-inf-lr X --em-inf-steps N --em-inf-kl X --em-inf-threshold X   EM-INF settings (defaults ${EM_INF_DEFAULTS.lr}, ${EM_INF_DEFAULTS.steps}, ${EM_INF_DEFAULTS.klWeight}, ${EM_INF_DEFAULTS.threshold})
  --adaptive-alpha X --adaptive-delta X   adaptive temperature (defaults 0.5, 0.1)
  --score FILE.jsonl        score saved responses ("response", or "responses" for pass@k) with no model
  --timeout S               code: wall-clock (and CPU) seconds per test run (default ${DEFAULT_LIMITS.seconds})
  --memory-mb N             code: memory per run (default ${DEFAULT_LIMITS.memoryBytes / 2 ** 20})
  --unsafe-no-sandbox       code: run programs without bubblewrap (limits only; never for untrusted code)
  --out FILE.jsonl          per-problem results: responses, answers, verdicts, stderr tails (default: none)
  --report FILE.html        accuracy against cost (tokens, seconds) per method as charts, with the table
  --seed N                  (default 0)
  --quantize int4|int8      quantize the model's linear layers at load (README "Quantized weights")
  --no-weight-check         skip the NaN/Inf check of the weights at load (one GPU pass)
  --help`;

/** Reads a task's problems from JSONL; errors name FILE:LINE and the field. */
export async function readProblems(path: string, task: TaskName = "math"): Promise<EvalProblem[]> {
  const records = await readJsonlRecords(path);
  return records.map(({ value, origin }) => TASKS[task].parse(value, origin));
}

/** Saved responses of a --score file: each line a problem of the task and its responses. */
async function readScored(path: string, task: TaskName) {
  const records = await readJsonlRecords(path, (o) => {
    const r = o.responses ?? (o.response === undefined ? undefined : [o.response]);
    if (!Array.isArray(r) || r.length === 0 || !r.every((x) => typeof x === "string")) {
      return `"response" (a string) or "responses" (a list of strings) is required`;
    }
    return null;
  });
  const problems = records.map(({ value, origin }) => TASKS[task].parse(value, origin));
  const responses = records.map(({ value: o }) => (o.responses ?? [o.response]) as string[]);
  return { problems, responses };
}

function parseFlags(args: string[]) {
  const flags = parseArgs(args, {
    string: [
      "model",
      "data",
      "task",
      "methods",
      "k",
      "refine-rounds",
      "temperature",
      "top-p",
      "max-new-tokens",
      "batch-size",
      "limit",
      "format",
      "rtol",
      "em-inf-lr",
      "em-inf-steps",
      "em-inf-kl",
      "em-inf-threshold",
      "adaptive-alpha",
      "adaptive-delta",
      "score",
      "timeout",
      "memory-mb",
      "out",
      "report",
      "seed",
      "quantize",
    ],
    boolean: ["chat", "no-chat", "no-weight-check", "unsafe-no-sandbox", "help"],
  });
  const demo = flags.model === undefined && flags.data === undefined && flags.score === undefined;
  const task = (flags.task ?? "math") as TaskName;
  if (!TASK_NAMES.includes(task)) {
    throw new Error(`--task must be ${TASK_NAMES.join(", ")}, got "${task}"`);
  }
  const methods =
    (typeof flags.methods === "string"
      ? flags.methods.split(",").map((m) => m.trim())
      : [...METHODS]) as EvalMethod[];
  const bad = methods.find((m) => !METHODS.includes(m));
  if (bad !== undefined) {
    throw new Error(
      `--methods: ${bad ? `unknown method "${bad}"` : "an empty name"} (${METHODS.join(", ")})`,
    );
  }
  const twice = methods.find((m, i) => methods.indexOf(m) !== i);
  if (twice) throw new Error(`--methods lists ${twice} twice`);
  const format = (flags.format ?? (demo ? "raw" : "boxed")) as AnswerFormat;
  if (format !== "boxed" && format !== "raw") {
    throw new Error(`--format must be boxed or raw, got "${format}"`);
  }
  if (demo && task !== "math" && flags.score === undefined) {
    throw new Error(`--task ${task} needs --data FILE.jsonl (or --score FILE.jsonl)`);
  }
  if (flags.chat && flags["no-chat"]) {
    throw new Error("--chat and --no-chat contradict each other: pass one");
  }
  // code has no answers to vote on: self-consistency only by explicit request, and refused then
  const chosen = typeof flags.methods === "string"
    ? methods
    : methods.filter((m) => task !== "code" || m !== "self-consistency");
  const options = {
    demo,
    task,
    methods: chosen,
    format,
    k: numberFlag(flags, "k", is.positiveInt) ?? 4,
    passAtK: task === "code" && flags.k !== undefined,
    refineRounds: numberFlag(flags, "refine-rounds", is.positiveInt) ?? 2,
    temperature: numberFlag(flags, "temperature", is.positive) ?? 1,
    topP: numberFlag(flags, "top-p", is.fraction) ?? 1,
    maxNewTokens: numberFlag(flags, "max-new-tokens", is.positiveInt) ??
      (demo ? DEMO_MAX_NEW_TOKENS : 1024),
    batchSize: numberFlag(flags, "batch-size", is.positiveInt) ?? (demo ? 500 : 64),
    limit: numberFlag(flags, "limit", is.positiveInt) ?? Infinity,
    seed: numberFlag(flags, "seed", is.int) ?? 0,
    rtol: numberFlag(flags, "rtol", is.positive) ?? 1e-2,
    limits: {
      seconds: numberFlag(flags, "timeout", is.positive) ?? DEFAULT_LIMITS.seconds,
      memoryBytes: (numberFlag(flags, "memory-mb", is.positiveInt) ??
        DEFAULT_LIMITS.memoryBytes / 2 ** 20) * 2 ** 20,
    },
    unsafe: flags["unsafe-no-sandbox"] === true,
    quantize: quantizeFlag(flags),
    emInf: {
      lr: numberFlag(flags, "em-inf-lr", is.positive) ?? EM_INF_DEFAULTS.lr,
      steps: numberFlag(flags, "em-inf-steps", is.positiveInt) ?? EM_INF_DEFAULTS.steps,
      klWeight: numberFlag(flags, "em-inf-kl", is.nonNegative) ?? EM_INF_DEFAULTS.klWeight,
      threshold: numberFlag(flags, "em-inf-threshold", is.nonNegative) ??
        EM_INF_DEFAULTS.threshold,
    },
    adaptive: {
      alpha: numberFlag(flags, "adaptive-alpha", is.fraction) ?? 0.5,
      delta: numberFlag(flags, "adaptive-delta", is.nonNegative) ?? 0.1,
    },
  };
  if (task === "code") {
    const problem = sandboxProblem(sandboxTools(), options.unsafe);
    if (problem) throw new Error(problem);
  }
  return { flags, options };
}

export async function main(args: string[]): Promise<number> {
  let flags: ParsedArgs;
  let options;
  try {
    ({ flags, options } = parseFlags(args));
    if (flags.help) {
      console.log(HELP);
      return 0;
    }
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n\nRun with --help for the flags.`);
    return 2;
  }
  const outFile = typeof flags.out === "string" ? flags.out : undefined;
  const reportFile = typeof flags.report === "string" ? flags.report : undefined;
  if (reportFile !== undefined && !reportFile.endsWith(".html")) {
    console.error(`error: --report must name an .html file, got "${reportFile}"`);
    return 2;
  }
  if (reportFile !== undefined) {
    // found before the evaluation runs, not after
    const dir = parentOf(reportFile);
    if (await pathKind(dir) !== "dir") {
      console.error(`error: --report: the directory ${dir} does not exist`);
      return 2;
    }
  }
  if (reportFile !== undefined && typeof flags.score === "string") {
    console.error("error: --report charts accuracy against cost, which --score has no record of");
    return 2;
  }
  if (typeof flags.score === "string") return await score(flags.score, options, outFile);
  const dev = await initDeviceOrExplain();
  if (!dev) return 1;
  console.log(`device: ${dev.info.description}`);
  let model;
  let problems: EvalProblem[];
  try {
    const dir = typeof flags.model === "string" ? flags.model : DEMO_MODEL;
    model = await loadModel(dir, {
      checkFinite: !flags["no-weight-check"],
      quantize: options.quantize,
    });
    if (!model.tokenizer) {
      throw new Error(`${dir}/tokenizer.json not found: evaluation needs the model's tokenizer`);
    }
    problems = typeof flags.data === "string"
      ? await readProblems(flags.data, options.task)
      : heldOutProblems(DEMO_HELD_OUT).map((p) => ({ problem: p.prompt, answer: p.answer }));
    if (flags.chat && !model.tokenizer.hasChatTemplate) {
      throw new UsageError(`--chat: ${model.sourceDir}/tokenizer_config.json has no chat_template`);
    }
    problems = problems.slice(0, options.limit);
    problems.forEach((p, i) =>
      checkEncodable(model!.tokenizer!, p.problem, p.origin ?? `problem ${i + 1}`)
    );
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    return e instanceof UsageError ? 2 : 1;
  }
  const chat = flags["no-chat"]
    ? false
    : flags.chat === true || (!options.demo && model.tokenizer!.hasChatTemplate);
  console.log(
    `evaluating ${problems.length} ${options.task} problems with ${options.methods.join(", ")}`,
  );
  let rows;
  try {
    rows = await evaluate(model, problems, { ...options, chat, outFile } as EvalOptions);
  } catch (e) {
    // e.g. NaN logits or a problem longer than the model's context: the message says which
    console.error(`error: ${(e as Error).message}`);
    return 1;
  }
  console.log(`\n${summaryTable(rows, options.k, options.refineRounds)}\n`);
  console.log(
    `mean token entropy (nats) of the generated tokens: ${
      rows.map((r) => `${r.method} ${r.entropy.toFixed(3)}`).join(", ")
    }`,
  );
  const s = rows.find((r) => r.method === "sample");
  const e = rows.find((r) => r.method === "em-inf");
  if (s && e) {
    const ratio = (e.seconds / Math.max(1, e.tokens)) / (s.seconds / Math.max(1, s.tokens));
    console.log(`EM-INF costs ${ratio.toFixed(2)}x plain sampling per generated token.`);
  }
  for (const r of rows) {
    if (r.verdicts) {
      console.log(
        `${r.method} runs: ${Object.entries(r.verdicts).map(([v, n]) => `${v} ${n}`).join(", ")}`,
      );
    }
  }
  model.dispose();
  if (reportFile) {
    const html = await evalReportHtml(
      rows.map((r) => ({ ...r, method: r.method as string })),
      {
        title: `Evaluation: ${problems.length} ${options.task} problems`,
        lines: [
          `model ${model.sourceDir}, data ${
            typeof flags.data === "string" ? flags.data : "the demo's held-out problems"
          }`,
          `${
            options.methods.join(", ")
          }; temperature ${options.temperature}, k ${options.k}, seed ${options.seed}`,
        ],
      },
    );
    try {
      await atomicWriteText(reportFile, html);
    } catch (e) {
      console.error(`error: ${(e as Error).message}`);
      return 1;
    }
    console.log(`wrote ${reportFile}`);
  }
  return 0;
}

class UsageError extends Error {}

/** --score: saved responses, no model. */
async function score(
  path: string,
  options: ReturnType<typeof parseFlags>["options"],
  outFile: string | undefined,
): Promise<number> {
  let read;
  try {
    read = await readScored(path, options.task);
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    return 1;
  }
  const { problems, responses } = read;
  const n = responses.reduce((s, r) => s + r.length, 0);
  console.log(`scoring ${n} responses to ${problems.length} ${options.task} problems from ${path}`);
  const t0 = performance.now();
  const r = await scoreResponses(problems, responses, { ...options, outFile });
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  const rows = [
    "| problems | responses | pass@1 |" + (r.passAtK !== undefined ? ` pass@${options.k} |` : "") +
    (r.majority !== undefined ? " majority vote |" : ""),
    "| --- | --- | --- |" + (r.passAtK !== undefined ? " --- |" : "") +
    (r.majority !== undefined ? " --- |" : ""),
    `| ${problems.length} | ${n} | ${pct(r.pass1)} |` +
    (r.passAtK !== undefined ? ` ${pct(r.passAtK)} |` : "") +
    (r.majority !== undefined ? ` ${pct(r.majority)} |` : ""),
  ];
  console.log(`\n${rows.join("\n")}\n`);
  if (r.verdicts) {
    console.log(
      `runs: ${Object.entries(r.verdicts).map(([v, c]) => `${v} ${c}`).join(", ")} (${
        ((performance.now() - t0) / 1000).toFixed(1)
      } s)`,
    );
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
