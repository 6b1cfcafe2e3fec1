/**
 * Evaluation: decode every problem with each method (greedy, sampling, EM-INF,
 * adaptive temperature, self-consistency), extract and compare answers, and
 * report accuracy with its cost (time, tokens) side by side.
 * @module
 */
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { type AnswerFormat, answersMatch, extractAnswer, majorityVote } from "./answer.ts";
import { type AdaptiveTemperatureOptions, adaptiveTemperatureProcessor } from "./baselines.ts";
import { type EmInfOptions, emInfProcessor } from "./em_inf.ts";
import { generate, type GenerateOptions } from "./generate.ts";

export const METHODS = ["greedy", "sample", "em-inf", "adaptive-temp", "self-consistency"] as const;
export type EvalMethod = typeof METHODS[number];

/** The paper's instruction for math problems. */
export const MATH_INSTRUCTION =
  "Please reason step by step, and put your final answer within \\boxed{}.";

export interface EvalProblem {
  problem: string;
  answer: string;
  /** Where it came from (`FILE:LINE`), for errors. */
  origin?: string;
}

export interface EvalOptions {
  methods: EvalMethod[];
  /** Sampling temperature of sample, em-inf, adaptive-temp and self-consistency. */
  temperature: number;
  topP: number;
  /** Self-consistency: samples per problem. */
  k: number;
  maxNewTokens: number;
  /** Sequences decoded together. */
  batchSize: number;
  seed: number;
  /** Render problems as chat (system instruction + user problem). */
  chat: boolean;
  format: AnswerFormat;
  emInf: EmInfOptions;
  adaptive: AdaptiveTemperatureOptions;
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
  seconds: number;
  tokens: number;
  /** Sequences decoded per problem. */
  sequences: number;
}

/** Prompt token ids of a problem. */
export function promptIds(
  model: CausalLM,
  problem: string,
  chat: boolean,
  format: AnswerFormat,
): number[] {
  const tok = model.tokenizer;
  if (!tok) throw new Error("evaluate: the model has no tokenizer");
  if (!chat) return tok.encode(format === "boxed" ? `${problem}\n${MATH_INSTRUCTION}` : problem);
  return tok.encode(tok.applyChatTemplate([
    { role: "system", content: MATH_INSTRUCTION },
    { role: "user", content: problem },
  ], { addGenerationPrompt: true }));
}

/** Runs every method over the problems. */
export async function evaluate(
  model: CausalLM,
  problems: EvalProblem[],
  o: EvalOptions,
): Promise<MethodSummary[]> {
  const log = o.log ?? console.log;
  const tok = model.tokenizer!;
  const prompts = problems.map((p) => promptIds(model, p.problem, o.chat, o.format));
  const eos = model.generation.eosTokenIds;
  const summaries: MethodSummary[] = [];
  for (const method of o.methods) {
    const samples = method === "self-consistency" ? o.k : 1;
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
    const jobs = prompts.flatMap((p, i) => Array.from({ length: samples }, () => ({ i, p })));
    const texts: string[][] = problems.map(() => []);
    let tokens = 0;
    const t0 = performance.now();
    for (let b = 0; b < jobs.length; b += o.batchSize) {
      const part = jobs.slice(b, b + o.batchSize);
      const r = await generate(model, part.map((j) => j.p), { ...decode, seed: o.seed + b });
      r.tokens.forEach((ids, n) => {
        tokens += ids.length;
        const body = ids.filter((id) => !eos.includes(id));
        // a response cut off before eos is kept; it is scored like any other
        texts[part[n].i].push(tok.decode(body, { skipSpecialTokens: true }));
      });
      log(`  ${method}: ${Math.min(b + o.batchSize, jobs.length)}/${jobs.length} sequences`);
    }
    const seconds = (performance.now() - t0) / 1000;
    let correct = 0;
    let sampleCorrect = 0;
    const lines: string[] = [];
    problems.forEach((p, i) => {
      const extracted = texts[i].map((t) => extractAnswer(t, o.format));
      const prediction = samples > 1 ? majorityVote(extracted) : extracted[0];
      const ok = answersMatch(prediction, p.answer);
      if (ok) correct++;
      sampleCorrect += extracted.filter((a) => answersMatch(a, p.answer)).length / samples;
      lines.push(JSON.stringify({
        method,
        index: i,
        problem: p.problem,
        answer: p.answer,
        responses: texts[i],
        extracted,
        prediction,
        correct: ok,
      }));
    });
    if (o.outFile) await Deno.writeTextFile(o.outFile, lines.join("\n") + "\n", { append: true });
    summaries.push({
      method,
      accuracy: correct / problems.length,
      samplePass1: samples > 1 ? sampleCorrect / problems.length : undefined,
      seconds,
      tokens,
      sequences: samples,
    });
  }
  return summaries;
}

/** The comparison table (markdown). */
export function summaryTable(rows: MethodSummary[], k: number): string {
  const sample = rows.find((r) => r.method === "sample");
  const perToken = (r: MethodSummary) => (1000 * r.seconds) / Math.max(1, r.tokens);
  const out = [
    "| method | accuracy | time (s) | tokens | ms/token | cost vs sampling |",
    "| --- | --- | --- | --- | --- | --- |",
  ];
  for (const r of rows) {
    const name = r.method === "self-consistency" ? `self-consistency (maj@${k})` : r.method;
    const acc = `${(100 * r.accuracy).toFixed(1)}%` +
      (r.samplePass1 !== undefined ? ` (pass@1 ${(100 * r.samplePass1).toFixed(1)}%)` : "");
    const cost = sample ? `${(r.seconds / sample.seconds).toFixed(2)}x` : "";
    out.push(
      `| ${name} | ${acc} | ${r.seconds.toFixed(1)} | ${r.tokens} | ${
        perToken(r).toFixed(2)
      } | ${cost} |`,
    );
  }
  return out.join("\n");
}
