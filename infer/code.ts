/**
 * Code tasks: the program is the last fenced code block of a response, run
 * against the problem's tests in the sandbox. Two shapes of problem, as the
 * benchmarks publish them:
 * - stdin/stdout (LiveCodeBench, LeetCode-style contests):
 *   `{"prompt", "tests": [{"input", "output"}]}`, outputs compared after
 *   removing trailing whitespace of each line and trailing blank lines;
 * - functional (HumanEval, MBPP): `{"prompt", "entry_point"?, "test"}`, the
 *   program followed by the assert-based test (and `check(entry_point)` when
 *   the test defines `check`, as HumanEval's do).
 * A problem passes when every test passes; pass@k uses the unbiased estimator.
 * @module
 */
import { type Program, type RunResult, runSandboxed, type SandboxLimits } from "./sandbox.ts";

/** One code problem. */
export interface CodeProblem {
  prompt: string;
  /** stdin/stdout tests. */
  tests?: { input: string; output: string }[];
  /** Functional: assert-based Python test code, and the function it checks. */
  test?: string;
  entryPoint?: string;
  origin?: string;
}

/** How one run (or one problem) ended: the verdicts the report counts. */
export type Verdict = "pass" | "fail" | "timeout" | "memory" | "error";

export interface CodeResult {
  verdict: Verdict;
  /** Why, for fail and error (no code block, wrong output on test 3, exit 1, ...). */
  detail: string;
  /** The stderr tail of the run that decided the verdict. */
  stderrTail: string;
  /** Tests passed of those run (stops at the first that does not pass). */
  passed: number;
  total: number;
}

const PYTHON = /^(python3?|py)$/i;
const SCRIPT: Record<string, Program["language"]> = {
  js: "javascript",
  javascript: "javascript",
  ts: "typescript",
  typescript: "typescript",
};

/**
 * The program of a response: the last ```python block, else the only block,
 * else the last block in a language we run. A fence opened and never closed
 * (a response cut off) is not a program, as LiveCodeBench extracts it.
 */
export function extractProgram(response: string): Program | null {
  const blocks: { lang: string; code: string }[] = [];
  const fence = /```([\w+-]*)[^\n]*\n([\s\S]*?)```/g;
  for (const m of response.matchAll(fence)) blocks.push({ lang: m[1] ?? "", code: m[2] });
  const python = blocks.filter((b) => PYTHON.test(b.lang)).at(-1);
  if (python) return { language: "python", source: python.code };
  if (blocks.length === 1) {
    const b = blocks[0];
    return { language: SCRIPT[b.lang.toLowerCase()] ?? "python", source: b.code };
  }
  const script = blocks.filter((b) => SCRIPT[b.lang.toLowerCase()]).at(-1);
  return script ? { language: SCRIPT[script.lang.toLowerCase()], source: script.code } : null;
}

/** Output as compared: trailing whitespace of each line and trailing blank lines removed. */
export function normalizeOutput(s: string): string {
  return s.replace(/\r\n/g, "\n").split("\n").map((l) => l.trimEnd()).join("\n").replace(
    /\n+$/,
    "",
  );
}

/** Checks a code problem record; returns the problem, or throws naming the field. */
export function parseCodeProblem(o: Record<string, unknown>, origin: string): CodeProblem {
  const prompt = o.prompt ?? o.question_content ?? o.text;
  if (typeof prompt !== "string" || !prompt) {
    throw new Error(`${origin}: "prompt" must be a non-empty string`);
  }
  const tests = o.tests ?? o.public_test_cases;
  if (tests !== undefined) {
    const list = typeof tests === "string" ? JSON.parse(tests) : tests;
    if (!Array.isArray(list) || list.length === 0) {
      throw new Error(`${origin}: "tests" must be a non-empty list of {"input", "output"}`);
    }
    list.forEach((t, i) => {
      if (typeof t?.input !== "string" || typeof t?.output !== "string") {
        throw new Error(`${origin}: "tests"[${i}] needs string "input" and "output"`);
      }
    });
    return { prompt, tests: list.map((t) => ({ input: t.input, output: t.output })), origin };
  }
  const test = o.test ??
    (Array.isArray(o.test_list) ? (o.test_list as string[]).join("\n") : undefined);
  if (typeof test !== "string" || !test) {
    throw new Error(
      `${origin}: a code problem needs "tests" (stdin/stdout) or "test" (assert-based Python)`,
    );
  }
  const entry = o.entry_point;
  if (entry !== undefined && (typeof entry !== "string" || !/^[A-Za-z_]\w*$/.test(entry))) {
    throw new Error(`${origin}: "entry_point" must be a Python function name`);
  }
  return { prompt, test, entryPoint: entry as string | undefined, origin };
}

function fromRun(r: RunResult, failDetail: string): Omit<CodeResult, "passed" | "total"> {
  const tail = r.stderrTail;
  switch (r.status) {
    case "timeout":
      return { verdict: "timeout", detail: "time limit", stderrTail: tail };
    case "memory":
      return { verdict: "memory", detail: "memory limit", stderrTail: tail };
    case "output":
      return { verdict: "error", detail: "output limit", stderrTail: tail };
    case "ok":
      return { verdict: "pass", detail: "", stderrTail: tail };
    default:
      if (/AssertionError/.test(tail)) {
        return { verdict: "fail", detail: failDetail, stderrTail: tail };
      }
      return {
        verdict: "error",
        detail: r.signal ? `killed by ${r.signal}` : `exit ${r.code}`,
        stderrTail: tail,
      };
  }
}

/** Runs a response's program against a problem's tests. */
export async function scoreCode(
  problem: CodeProblem,
  response: string,
  options: { limits?: Partial<SandboxLimits>; unsafe?: boolean } = {},
): Promise<CodeResult> {
  const program = extractProgram(response);
  if (!program) {
    return { verdict: "error", detail: "no code block", stderrTail: "", passed: 0, total: 1 };
  }
  if (problem.tests) {
    const total = problem.tests.length;
    for (let i = 0; i < total; i++) {
      const t = problem.tests[i];
      const r = await runSandboxed({ ...program, stdin: t.input }, options);
      if (r.status !== "ok") {
        const v = fromRun(r, `test ${i + 1}`);
        return { ...(v.verdict === "pass" ? { ...v, verdict: "error" } : v), passed: i, total };
      }
      if (normalizeOutput(r.stdout) !== normalizeOutput(t.output)) {
        return {
          verdict: "fail",
          detail: `wrong output on test ${i + 1}`,
          stderrTail: r.stderrTail,
          passed: i,
          total,
        };
      }
    }
    return { verdict: "pass", detail: "", stderrTail: "", passed: total, total };
  }
  if (program.language !== "python") {
    return {
      verdict: "error",
      detail: "the tests are Python; the program is not",
      stderrTail: "",
      passed: 0,
      total: 1,
    };
  }
  const check = /\bdef\s+check\s*\(/.test(problem.test!) && problem.entryPoint
    ? `\n\ncheck(${problem.entryPoint})\n`
    : "\n";
  const r = await runSandboxed(
    { language: "python", source: `${program.source}\n\n${problem.test}${check}` },
    options,
  );
  const v = fromRun(r, "a test assertion failed");
  return { ...v, passed: v.verdict === "pass" ? 1 : 0, total: 1 };
}

/** Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k). */
export function passAtK(n: number, c: number, k: number): number {
  if (k > n) throw new Error(`pass@${k} needs at least ${k} samples, got ${n}`);
  if (n - c < k) return 1;
  let p = 1;
  for (let i = n - c + 1; i <= n; i++) p *= 1 - k / i;
  return 1 - p;
}

/** The instruction code problems are posed with. */
export function codeInstruction(problem: CodeProblem): string {
  return problem.tests
    ? "Write a complete Python 3 program that reads the input from standard input and writes the answer to standard output. Give the program in one ```python code block."
    : "Complete the Python function. Give the whole function (with any imports) in one ```python code block.";
}
