/**
 * `deno task eval`: compare decoding methods on a dataset. With no arguments,
 * the embedded demo model on its held-out arithmetic problems.
 * @module
 */
import { is, numberFlag, parseArgs } from "@std/cli";
import { initDeviceOrExplain } from "../engine/device.ts";
import { readJsonlRecords } from "../engine/jsonl.ts";
import { loadModel } from "../engine/model/checkpoint.ts";
import { checkEncodable } from "../engine/model/tokenizer.ts";
import { DEMO_HELD_OUT, DEMO_MAX_NEW_TOKENS, DEMO_MODEL, heldOutProblems } from "../demo/task.ts";
import type { AnswerFormat } from "./answer.ts";
import { EM_INF_DEFAULTS } from "./em_inf.ts";
import { type EvalMethod, type EvalProblem, evaluate, METHODS, summaryTable } from "./eval.ts";

const HELP = `deno task eval [flags]

Decodes every problem with each method and compares accuracy and cost.
With no --model and no --data: the demo model on ${DEMO_HELD_OUT} held-out arithmetic problems.

  --model DIR               Qwen checkpoint directory (default: the demo model)
  --data FILE.jsonl         {"problem": ..., "answer": ...} per line (default: demo problems)
  --methods LIST            comma-separated: ${METHODS.join(",")} (default: all)
  --k N                     self-consistency samples per problem (default 4)
  --temperature T           sampling temperature (default 1)
  --top-p P                 nucleus mass (default 1)
  --max-new-tokens N        response limit (default 1024; demo ${DEMO_MAX_NEW_TOKENS})
  --batch-size N            sequences decoded together (default 64; demo 500)
  --limit N                 evaluate the first N problems
  --format boxed|raw        answer = last \\boxed{} (default), or the whole response (demo)
  --chat / --no-chat        chat template with the instruction as system message (default: on when the model has one)
  --em-inf-lr X --em-inf-steps N --em-inf-kl X --em-inf-threshold X   EM-INF settings (defaults ${EM_INF_DEFAULTS.lr}, ${EM_INF_DEFAULTS.steps}, ${EM_INF_DEFAULTS.klWeight}, ${EM_INF_DEFAULTS.threshold})
  --adaptive-alpha X --adaptive-delta X   adaptive temperature (defaults 0.5, 0.1)
  --out FILE.jsonl          per-problem results (default: none)
  --seed N                  (default 0)
  --no-weight-check         skip the NaN/Inf check of the weights at load (one GPU pass)
  --help`;

export async function readProblems(path: string): Promise<EvalProblem[]> {
  const records = await readJsonlRecords(path, (o) => {
    if (typeof o.problem !== "string") return `"problem" must be a string`;
    if (typeof o.answer !== "string" && typeof o.answer !== "number") {
      return `"answer" must be a string or number`;
    }
    return null;
  });
  return records.map(({ value: o, origin }) => ({
    problem: o.problem as string,
    answer: String(o.answer),
    origin,
  }));
}

export async function main(args: string[]): Promise<number> {
  let flags;
  let options;
  try {
    flags = parseArgs(args, {
      string: [
        "model",
        "data",
        "methods",
        "k",
        "temperature",
        "top-p",
        "max-new-tokens",
        "batch-size",
        "limit",
        "format",
        "em-inf-lr",
        "em-inf-steps",
        "em-inf-kl",
        "em-inf-threshold",
        "adaptive-alpha",
        "adaptive-delta",
        "out",
        "seed",
      ],
      boolean: ["chat", "no-chat", "no-weight-check", "help"],
    });
    if (flags.help) {
      console.log(HELP);
      return 0;
    }
    const demo = flags.model === undefined && flags.data === undefined;
    const methods = (typeof flags.methods === "string"
      ? flags.methods.split(",").map((m) =>
        m.trim()
      )
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
    options = {
      demo,
      methods,
      format,
      k: numberFlag(flags, "k", is.positiveInt) ?? 4,
      temperature: numberFlag(flags, "temperature", is.positive) ?? 1,
      topP: numberFlag(flags, "top-p", is.fraction) ?? 1,
      maxNewTokens: numberFlag(flags, "max-new-tokens", is.positiveInt) ??
        (demo ? DEMO_MAX_NEW_TOKENS : 1024),
      batchSize: numberFlag(flags, "batch-size", is.positiveInt) ?? (demo ? 500 : 64),
      limit: numberFlag(flags, "limit", is.positiveInt) ?? Infinity,
      seed: numberFlag(flags, "seed", is.int) ?? 0,
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
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n\nRun with --help for the flags.`);
    return 2;
  }
  const dev = await initDeviceOrExplain();
  if (!dev) return 1;
  console.log(`device: ${dev.info.description}`);
  let model;
  let problems: EvalProblem[];
  try {
    const dir = typeof flags.model === "string" ? flags.model : DEMO_MODEL;
    model = await loadModel(dir, { checkFinite: !flags["no-weight-check"] });
    if (!model.tokenizer) {
      throw new Error(`${dir}/tokenizer.json not found: evaluation needs the model's tokenizer`);
    }
    problems = typeof flags.data === "string"
      ? await readProblems(flags.data)
      : heldOutProblems(DEMO_HELD_OUT).map((p) => ({ problem: p.prompt, answer: p.answer }));
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    return 1;
  }
  problems = problems.slice(0, options.limit);
  if (flags.chat && flags["no-chat"]) {
    console.error("error: --chat and --no-chat contradict each other: pass one");
    return 2;
  }
  if (flags.chat && !model.tokenizer!.hasChatTemplate) {
    console.error(`error: --chat: ${model.sourceDir}/tokenizer_config.json has no chat_template`);
    return 2;
  }
  try {
    problems.forEach((p, i) =>
      checkEncodable(model.tokenizer!, p.problem, p.origin ?? `problem ${i + 1}`)
    );
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    return 1;
  }
  const chat = flags["no-chat"]
    ? false
    : flags.chat === true || (!options.demo && model.tokenizer!.hasChatTemplate);
  console.log(`evaluating ${problems.length} problems with ${options.methods.join(", ")}`);
  let rows;
  try {
    rows = await evaluate(model, problems, {
      ...options,
      chat,
      outFile: typeof flags.out === "string" ? flags.out : undefined,
    });
  } catch (e) {
    // e.g. NaN logits or a problem longer than the model's context: the message says which
    console.error(`error: ${(e as Error).message}`);
    return 1;
  }
  console.log(`\n${summaryTable(rows, options.k)}\n`);
  const s = rows.find((r) => r.method === "sample");
  const e = rows.find((r) => r.method === "em-inf");
  if (s && e) {
    const ratio = (e.seconds / Math.max(1, e.tokens)) / (s.seconds / Math.max(1, s.tokens));
    console.log(`EM-INF costs ${ratio.toFixed(2)}x plain sampling per generated token.`);
  }
  model.dispose();
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
