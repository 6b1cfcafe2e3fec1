/**
 * Evaluation: decode every problem with each method (greedy, sampling,
 * EM-INF, adaptive temperature, self-consistency, sequential refinement),
 * score the responses with the task (math, science, code), and report
 * accuracy with its cost (time, tokens) side by side. Also scores responses
 * saved by any tool, with no model (`scoreResponses`).
 * @module
 */
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { checkEncodable } from "../engine/model/tokenizer.ts";
import type { AnswerFormat } from "./answer.ts";
import { majorityVote } from "./answer.ts";
import { type AdaptiveTemperatureOptions, adaptiveTemperatureProcessor } from "./baselines.ts";
import { passAtK, type Verdict } from "./code.ts";
import { type EmInfOptions, emInfProcessor } from "./em_inf.ts";
import { generate, type GenerateOptions } from "./generate.ts";
import type { SandboxLimits } from "./sandbox.ts";
import {
  type EvalProblem,
  MATH_INSTRUCTION,
  problemText,
  REFINE_INSTRUCTION,
  type Score,
  type ScoreOptions,
  type TaskName,
  TASKS,
} from "./tasks.ts";

export { type EvalProblem, MATH_INSTRUCTION };

export const METHODS = [
  "greedy",
  "sample",
  "em-inf",
  "adaptive-temp",
  "self-consistency",
  "refine",
] as const;
export type EvalMethod = typeof METHODS[number];

export interface EvalOptions {
  methods: EvalMethod[];
  /** What is scored and how (default math). */
  task?: TaskName;
  /** Sampling temperature of every method but greedy. */
  temperature: number;
  topP: number;
  /**
   * Self-consistency: samples per problem (math, science). Code: with
   * `passAtK`, the samples each sampling method draws, for pass@k.
   */
  k: number;
  /** Code: sampling methods draw k samples each and report pass@k beside pass@1. */
  passAtK?: boolean;
  /** Refinement: rounds of "check and improve" after the first response. */
  refineRounds?: number;
  maxNewTokens: number;
  /** Sequences decoded together. */
  batchSize: number;
  seed: number;
  /** Render problems as chat (system instruction + user problem). */
  chat: boolean;
  format: AnswerFormat;
  /** Science: relative tolerance. */
  rtol?: number;
  emInf: EmInfOptions;
  adaptive: AdaptiveTemperatureOptions;
  /** Code: sandbox limits; `unsafe` runs programs without isolation. */
  limits?: Partial<SandboxLimits>;
  unsafe?: boolean;
  /** Per-problem results are appended here (JSONL) when given. */
  outFile?: string;
  log?: (line: string) => void;
}

export interface MethodSummary {
  method: EvalMethod;
  /** pass@1 (self-consistency: maj@k). */
  accuracy: number;
  /** Self-consistency: mean accuracy of its individual samples. */
  samplePass1?: number;
  /** Code with k samples: pass@k by the unbiased estimator. */
  passAtK?: number;
  seconds: number;
  tokens: number;
  /** Sequences decoded per problem (refinement: its rounds included). */
  sequences: number;
  /** Mean entropy (nats) of the distributions the generated tokens were drawn from (after EM-INF or adaptive temperature, at temperature 1). */
  entropy: number;
  /** Code: how the runs ended. */
  verdicts?: Partial<Record<Verdict, number>>;
}

/** Chat messages, or raw text, of a problem (and of a refinement round after `previous`). */
function promptIds(
  model: CausalLM,
  p: EvalProblem,
  o: Pick<EvalOptions, "chat" | "format" | "task">,
  previous: string | null = null,
): number[] {
  const tok = model.tokenizer;
  if (!tok) throw new Error("evaluate: the model has no tokenizer");
  const task = TASKS[o.task ?? "math"];
  const instruction = task.instruction(p);
  const user = problemText(p);
  if (o.chat) {
    const messages = [
      { role: "system", content: instruction },
      { role: "user", content: user },
      ...(previous === null ? [] : [
        { role: "assistant", content: previous },
        { role: "user", content: REFINE_INSTRUCTION },
      ]),
    ];
    return tok.encode(tok.applyChatTemplate(messages, { addGenerationPrompt: true }));
  }
  // raw text: the demo's plain prompts ("raw" format) carry no instruction
  const plainMath = (o.task ?? "math") === "math" && o.format !== "boxed";
  const posed = plainMath ? user : `${user}\n${instruction}`;
  if (previous === null) return tok.encode(posed);
  const refine = `${posed}\n${previous}\n\n${REFINE_INSTRUCTION}\n`;
  try {
    checkEncodable(tok, refine, "refine");
    return tok.encode(refine);
  } catch {
    return tok.encode(posed); // a vocabulary that cannot spell the instruction: ask again
  }
}

/** Runs `n` jobs through `f` with at most `limit` at once; results in job order. */
async function pool<T, R>(jobs: T[], limit: number, f: (job: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(jobs.length);
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const i = next++;
      out[i] = await f(jobs[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, jobs.length)) }, worker));
  return out;
}

/** Concurrent sandbox runs: the core count. */
const CORES = Math.max(1, navigator.hardwareConcurrency ?? 1);

/** Scores every problem's responses; code runs in parallel up to the core count. */
export function scoreAll(
  problems: EvalProblem[],
  responses: string[][],
  taskName: TaskName,
  o: ScoreOptions,
): Promise<Score[][]> {
  const task = TASKS[taskName];
  const jobs = responses.flatMap((rs, i) => rs.map((r, j) => ({ i, j, r })));
  return pool(
    jobs,
    taskName === "code" ? CORES : jobs.length,
    (job) => task.score(problems[job.i], job.r, o),
  ).then((scores) => {
    const out: Score[][] = responses.map(() => []);
    jobs.forEach((job, n) => out[job.i][job.j] = scores[n]);
    return out;
  });
}

/** pass@1, maj@k, pass@k and verdict counts of scored responses. */
export function summarize(
  scores: Score[][],
  responses: string[][],
  o: { vote?: (problem: number, response: string) => string | null; k?: number },
): Pick<MethodSummary, "accuracy" | "samplePass1" | "passAtK" | "verdicts"> & {
  predictions: (string | null)[];
} {
  const n = Math.max(1, scores.length);
  const pass1 = scores.reduce((s, row) => s + row.filter((x) => x.correct).length / row.length, 0) /
    n;
  const verdicts: Partial<Record<Verdict, number>> = {};
  scores.flat().forEach((s) => s.verdict && (verdicts[s.verdict] = (verdicts[s.verdict] ?? 0) + 1));
  const many = scores.some((row) => row.length > 1);
  let accuracy = pass1;
  const predictions = scores.map((row) => row[0]?.answer ?? null);
  if (many && o.vote) {
    // self-consistency: the majority answer counts; correct when a response giving it is
    let maj = 0;
    scores.forEach((row, i) => {
      const votes = responses[i].map((r) => o.vote!(i, r));
      const winner = majorityVote(votes);
      predictions[i] = winner;
      const at = votes.indexOf(winner);
      if (winner !== null && row[at].correct) maj++;
    });
    accuracy = maj / n;
  }
  const k = o.k ?? 1;
  const passK = many && !o.vote && k > 1 && scores.every((row) => row.length >= k)
    ? scores.reduce(
      (s, row) => s + passAtK(row.length, row.filter((x) => x.correct).length, k),
      0,
    ) / n
    : undefined;
  return {
    accuracy,
    samplePass1: many && o.vote ? pass1 : undefined,
    passAtK: passK,
    verdicts: Object.keys(verdicts).length ? verdicts : undefined,
    predictions,
  };
}

/** Runs every method over the problems. */
export async function evaluate(
  model: CausalLM,
  problems: EvalProblem[],
  o: EvalOptions,
): Promise<MethodSummary[]> {
  const log = o.log ?? console.log;
  const taskName = o.task ?? "math";
  const task = TASKS[taskName];
  const tok = model.tokenizer!;
  const scoring: ScoreOptions = {
    format: o.format,
    rtol: o.rtol ?? 1e-2,
    limits: o.limits,
    unsafe: o.unsafe,
  };
  const prompts = problems.map((p) => promptIds(model, p, o));
  const eos = model.generation.eosTokenIds;
  const rounds = o.refineRounds ?? 2;
  const summaries: MethodSummary[] = [];
  for (const method of o.methods) {
    if (method === "self-consistency" && !task.vote) {
      throw new Error(
        `self-consistency votes on answers; a ${taskName} task has none to vote on: use --k with sample for pass@k`,
      );
    }
    const samples = method === "greedy"
      ? 1
      : method === "self-consistency" || (o.passAtK && !task.vote)
      ? o.k
      : 1;
    const decode: GenerateOptions = {
      maxNewTokens: o.maxNewTokens,
      greedy: method === "greedy",
      temperature: o.temperature,
      topP: o.topP,
      eosTokenIds: eos,
      logitsProcessor: method === "em-inf"
        ? emInfProcessor(o.emInf)
        : method === "adaptive-temp"
        ? adaptiveTemperatureProcessor(o.adaptive)
        : undefined,
    };
    let tokens = 0;
    let entropySum = 0;
    /** Decodes one prompt per job; returns each job's response text. */
    const decodeAll = async (jobs: number[][], label: string, seed: number) => {
      const texts: string[] = [];
      for (let b = 0; b < jobs.length; b += o.batchSize) {
        const part = jobs.slice(b, b + o.batchSize);
        const r = await generate(model, part, { ...decode, seed: seed + b, returnEntropies: true });
        r.entropies!.forEach((h) => h.forEach((x) => entropySum += x));
        r.tokens.forEach((ids) => {
          tokens += ids.length;
          // a response cut off before eos is kept; it is scored like any other
          texts.push(
            tok.decode(ids.filter((id) => !eos.includes(id)), { skipSpecialTokens: true }),
          );
        });
        log(`  ${label}: ${Math.min(b + o.batchSize, jobs.length)}/${jobs.length} sequences`);
      }
      return texts;
    };
    const t0 = performance.now();
    const owner = problems.flatMap((_, i) => Array.from({ length: samples }, () => i));
    let texts = await decodeAll(owner.map((i) => prompts[i]), method, o.seed);
    const history = texts.map((t) => [t]);
    if (method === "refine") {
      // sequential refinement: each round sees its previous response and is asked to improve it
      for (let r = 1; r <= rounds; r++) {
        const again = owner.map((i, n) => promptIds(model, problems[i], o, texts[n]));
        texts = await decodeAll(again, `refine round ${r}/${rounds}`, o.seed + 7919 * r);
        texts.forEach((t, n) => history[n].push(t));
      }
    }
    const seconds = (performance.now() - t0) / 1000;
    const responses: string[][] = problems.map(() => []);
    owner.forEach((i, n) => responses[i].push(texts[n]));
    const scores = await scoreAll(problems, responses, taskName, scoring);
    const s = summarize(scores, responses, {
      vote: method === "self-consistency"
        ? (i, r) => task.vote!(problems[i], r, scoring)
        : undefined,
      k: samples,
    });
    if (o.outFile) {
      const lines = problems.map((p, i) =>
        JSON.stringify({
          method,
          index: i,
          problem: p.problem,
          answer: p.answer,
          responses: responses[i],
          ...(method === "refine"
            ? { rounds: owner.flatMap((j, n) => j === i ? [history[n]] : []) }
            : {}),
          extracted: scores[i].map((x) => x.answer),
          prediction: s.predictions[i],
          correct: scores[i].map((x) => x.correct),
          ...(scores[i][0]?.verdict ? { runs: scores[i].map(runRecord) } : {}),
        })
      );
      await Deno.writeTextFile(o.outFile, lines.join("\n") + "\n", { append: true });
    }
    summaries.push({
      method,
      accuracy: s.accuracy,
      samplePass1: s.samplePass1,
      passAtK: s.passAtK,
      seconds,
      tokens,
      sequences: samples * (method === "refine" ? rounds + 1 : 1),
      entropy: entropySum / Math.max(1, tokens),
      verdicts: s.verdicts,
    });
  }
  return summaries;
}

/** What --out keeps of a code run: its verdict, why, and the stderr tail. */
function runRecord(s: Score) {
  return { verdict: s.verdict, detail: s.detail, stderrTail: s.stderrTail };
}

/**
 * Scores responses already generated (`response`, or `responses` for
 * pass@k) with no model, so that other tools' outputs can be compared.
 */
export async function scoreResponses(
  problems: EvalProblem[],
  responses: string[][],
  o: { task: TaskName; k: number; outFile?: string } & ScoreOptions,
): Promise<
  {
    pass1: number;
    passAtK?: number;
    majority?: number;
    verdicts?: Partial<Record<Verdict, number>>;
  }
> {
  const task = TASKS[o.task];
  const scores = await scoreAll(problems, responses, o.task, o);
  const plain = summarize(scores, responses, { k: o.k });
  const voted = task.vote && responses.some((r) => r.length > 1)
    ? summarize(scores, responses, { vote: (i, r) => task.vote!(problems[i], r, o), k: o.k })
    : null;
  const passK = !task.vote && o.k > 1 && responses.every((r) => r.length >= o.k)
    ? scores.reduce(
      (s, row) => s + passAtK(row.length, row.filter((x) => x.correct).length, o.k),
      0,
    ) / Math.max(1, scores.length)
    : undefined;
  if (o.outFile) {
    const lines = problems.map((p, i) =>
      JSON.stringify({
        index: i,
        origin: p.origin,
        correct: scores[i].map((x) => x.correct),
        extracted: scores[i].map((x) => x.answer),
        ...(scores[i][0]?.verdict ? { runs: scores[i].map(runRecord) } : {}),
      })
    );
    await Deno.writeTextFile(o.outFile, lines.join("\n") + "\n", { append: true });
  }
  return {
    pass1: plain.accuracy,
    passAtK: passK,
    majority: voted?.accuracy,
    verdicts: plain.verdicts,
  };
}

/** The comparison table (markdown). */
export function summaryTable(rows: MethodSummary[], k: number, refineRounds = 2): string {
  const sample = rows.find((r) => r.method === "sample");
  const perToken = (r: MethodSummary) => (1000 * r.seconds) / Math.max(1, r.tokens);
  const withK = rows.some((r) => r.passAtK !== undefined);
  const out = [
    `| method | accuracy |${
      withK ? ` pass@${k} |` : ""
    } time (s) | tokens | ms/token | cost vs sampling |`,
    `| --- | --- |${withK ? " --- |" : ""} --- | --- | --- | --- |`,
  ];
  for (const r of rows) {
    const name = r.method === "self-consistency"
      ? `self-consistency (maj@${k})`
      : r.method === "refine"
      ? `refine (${refineRounds} rounds)`
      : r.method;
    const acc = `${(100 * r.accuracy).toFixed(1)}%` +
      (r.samplePass1 !== undefined ? ` (pass@1 ${(100 * r.samplePass1).toFixed(1)}%)` : "");
    const passK = withK
      ? ` ${r.passAtK === undefined ? "" : `${(100 * r.passAtK).toFixed(1)}%`} |`
      : "";
    const cost = sample ? `${(r.seconds / sample.seconds).toFixed(2)}x` : "";
    out.push(
      `| ${name} | ${acc} |${passK} ${r.seconds.toFixed(1)} | ${r.tokens} | ${
        perToken(r).toFixed(2)
      } | ${cost} |`,
    );
  }
  return out.join("\n");
}
