/**
 * What `deno task eval` can score: math (the last \boxed{}, exact or
 * numeric), science (numbers with units and a relative tolerance, or choice
 * letters) and code (the program run against tests in the sandbox). Each
 * task reads its JSONL records, poses its problems and scores a response.
 * To add one: an entry in TASKS and a test.
 * @module
 */
import { type AnswerFormat, answersMatch, extractAnswer, normalizeAnswer } from "./answer.ts";
import {
  codeInstruction,
  type CodeProblem,
  parseCodeProblem,
  scoreCode,
  type Verdict,
} from "./code.ts";
import type { SandboxLimits } from "./sandbox.ts";
import { choiceLetter, extractScienceAnswer, parseQuantity, scienceMatch } from "./science.ts";

/** One evaluation problem of any task. */
export interface EvalProblem {
  /** The text posed to the model (a code problem's prompt). */
  problem: string;
  /** The gold answer (math, science). */
  answer?: string;
  /** Multiple choice: the options, lettered A, B, ... in the prompt. */
  choices?: string[];
  /** Code: the tests. */
  code?: CodeProblem;
  /** Where it came from (`FILE:LINE`), for errors. */
  origin?: string;
}

/** How a response was scored. */
export interface Score {
  correct: boolean;
  /** The answer extracted (math, science), or null. */
  answer: string | null;
  /** Code: pass, fail, timeout, memory or error, with why and the stderr tail. */
  verdict?: Verdict;
  detail?: string;
  stderrTail?: string;
}

/** Settings scoring reads. */
export interface ScoreOptions {
  /** Math: how to pull the answer out. */
  format: AnswerFormat;
  /** Science: relative tolerance of numeric answers. */
  rtol: number;
  /** Code: sandbox limits, and running without isolation (never by default). */
  limits?: Partial<SandboxLimits>;
  unsafe?: boolean;
}

export interface Task {
  /** One line for --help. */
  summary: string;
  /** A JSONL record as a problem; throws naming FILE:LINE and the field. */
  parse(o: Record<string, unknown>, origin: string): EvalProblem;
  /** The instruction the problem is posed with (the chat's system message). */
  instruction(p: EvalProblem): string;
  score(p: EvalProblem, response: string, o: ScoreOptions): Promise<Score>;
  /** What self-consistency votes on (the normalised answer); absent: no majority vote (code). */
  vote?(p: EvalProblem, response: string, o: ScoreOptions): string | null;
}

/** The paper's instruction for math problems. */
export const MATH_INSTRUCTION =
  "Please reason step by step, and put your final answer within \\boxed{}.";

export const SCIENCE_INSTRUCTION =
  "Please reason step by step, and put your final answer within \\boxed{}, with its unit if it has one.";

/** What sequential refinement asks after each round. */
export const REFINE_INSTRUCTION =
  "Review your previous answer: check each step for mistakes and give an improved final answer in the same format.";

function gold(o: Record<string, unknown>, origin: string): string {
  if (typeof o.answer !== "string" && typeof o.answer !== "number") {
    throw new Error(`${origin}: "answer" must be a string or number`);
  }
  return String(o.answer);
}

function text(o: Record<string, unknown>, origin: string, ...fields: string[]): string {
  for (const f of fields) if (typeof o[f] === "string" && o[f]) return o[f] as string;
  throw new Error(`${origin}: "${fields[0]}" must be a non-empty string`);
}

const math: Task = {
  summary: 'the last \\boxed{} against "answer", normalised, numeric where both parse',
  parse: (o, origin) => ({
    problem: text(o, origin, "problem", "prompt"),
    answer: gold(o, origin),
    origin,
  }),
  instruction: () => MATH_INSTRUCTION,
  score: (p, response, o) => {
    const answer = extractAnswer(response, o.format);
    return Promise.resolve({ correct: answersMatch(answer, p.answer!), answer });
  },
  vote: (_p, response, o) => extractAnswer(response, o.format),
};

const LETTERS = "ABCDEFGHIJ";

const science: Task = {
  summary:
    'numbers with units and scientific notation within --rtol of "answer", or choice letters',
  parse: (o, origin) => {
    const choices = o.choices ?? o.options;
    if (
      choices !== undefined &&
      (!Array.isArray(choices) || !choices.every((c) => typeof c === "string"))
    ) {
      throw new Error(`${origin}: "choices" must be a list of strings`);
    }
    if (Array.isArray(choices) && choices.length > LETTERS.length) {
      throw new Error(
        `${origin}: "choices" holds ${choices.length} options, at most ${LETTERS.length}`,
      );
    }
    const answer = gold(o, origin);
    if (choices && choiceLetter(answer) === null && !choices.includes(answer)) {
      throw new Error(`${origin}: "answer" must be a choice letter or one of the choices`);
    }
    const letter = choices && choiceLetter(answer) === null
      ? LETTERS[(choices as string[]).indexOf(answer)]
      : answer;
    return {
      problem: text(o, origin, "problem", "question", "prompt"),
      answer: letter,
      choices: choices as string[] | undefined,
      origin,
    };
  },
  instruction: (p) =>
    p.choices
      ? "Please reason step by step, and put the letter of your final choice within \\boxed{}."
      : SCIENCE_INSTRUCTION,
  score: (p, response, o) => {
    const answer = extractScienceAnswer(response, !!p.choices);
    return Promise.resolve({
      correct: scienceMatch(answer, p.answer!, { rtol: o.rtol, multipleChoice: !!p.choices }),
      answer,
    });
  },
  vote: (p, response) => {
    const a = extractScienceAnswer(response, !!p.choices);
    if (a === null) return null;
    const letter = choiceLetter(a);
    if (letter && a.trim().length <= 3) return letter;
    const q = parseQuantity(a);
    return q ? `${Number(q.value.toPrecision(3))} ${q.unit}` : normalizeAnswer(a);
  },
};

const code: Task = {
  summary: "the last fenced code block run against the tests in the sandbox (pass@1, pass@k)",
  parse: (o, origin) => {
    const c = parseCodeProblem(o, origin);
    return { problem: c.prompt, code: c, origin };
  },
  instruction: (p) => codeInstruction(p.code!),
  score: async (p, response, o) => {
    const r = await scoreCode(p.code!, response, { limits: o.limits, unsafe: o.unsafe });
    return {
      correct: r.verdict === "pass",
      answer: null,
      verdict: r.verdict,
      detail: r.detail,
      stderrTail: r.stderrTail,
    };
  },
};

export type TaskName = "math" | "science" | "code";
export const TASKS: Record<TaskName, Task> = { math, science, code };
export const TASK_NAMES = Object.keys(TASKS) as TaskName[];

/** The problem as posed: its text, and its lettered choices when it has them. */
export function problemText(p: EvalProblem): string {
  if (!p.choices) return p.problem;
  return `${p.problem}\n\n${p.choices.map((c, i) => `(${LETTERS[i]}) ${c}`).join("\n")}`;
}
