/**
 * Code tasks: extracting the program from a response, the sandbox against
 * hostile programs (each case fails if its limit or isolation is removed),
 * scoring stdin/stdout and assert-based problems, and pass@k.
 */
import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import {
  extractProgram,
  normalizeOutput,
  parseCodeProblem,
  passAtK,
  scoreCode,
} from "../infer/code.ts";
import { runSandboxed, sandboxProblem, sandboxTools } from "../infer/sandbox.ts";
import { runCli } from "./_cli.ts";

Deno.test("extractProgram(): the last python block, else the only block; none or unterminated is no program", () => {
  const py = (s: string) => ({ language: "python", source: s });
  assertEquals(extractProgram("a\n```python\nx=1\n```\nthen\n```python\nx=2\n```\n"), py("x=2\n"));
  assertEquals(extractProgram("```py\nprint(1)\n```\n```text\nout\n```"), py("print(1)\n"));
  assertEquals(extractProgram("only\n```\nprint(3)\n```"), py("print(3)\n"));
  assertEquals(extractProgram("```js\nconsole.log(1)\n```"), {
    language: "javascript",
    source: "console.log(1)\n",
  });
  assertEquals(extractProgram("```\na\n```\n```\nb\n```"), null, "two untagged blocks: ambiguous");
  assertEquals(extractProgram("no code at all"), null);
  assertEquals(extractProgram("```python\nprint(1)\n"), null, "unterminated");
  assertEquals(extractProgram("```python\nx=1\n```\n```python\ncut off"), py("x=1\n"));
});

Deno.test("normalizeOutput() drops trailing whitespace per line and trailing blank lines only", () => {
  assertEquals(normalizeOutput("1 2  \n3\r\n\n\n"), "1 2\n3");
  assert(normalizeOutput(" 1") !== normalizeOutput("1"), "leading space still counts");
});

Deno.test("parseCodeProblem() names the file, line and field of a bad record", () => {
  assertThrows(() => parseCodeProblem({ prompt: "" }, "c.jsonl:1"), Error, 'c.jsonl:1: "prompt"');
  assertThrows(() => parseCodeProblem({ prompt: "x" }, "c.jsonl:2"), Error, 'needs "tests"');
  assertThrows(
    () => parseCodeProblem({ prompt: "x", tests: [{ input: 1 }] }, "c.jsonl:3"),
    Error,
    '"tests"[0] needs string "input" and "output"',
  );
  assertThrows(
    () => parseCodeProblem({ prompt: "x", test: "assert 1", entry_point: "a b" }, "c.jsonl:4"),
    Error,
    '"entry_point"',
  );
});

Deno.test("passAtK() is the unbiased estimator 1 - C(n-c, k)/C(n, k)", () => {
  assertAlmostEquals(passAtK(10, 3, 1), 0.3, 1e-12);
  assertAlmostEquals(passAtK(10, 3, 5), 1 - (7 * 6 * 5 * 4 * 3) / (10 * 9 * 8 * 7 * 6), 1e-12);
  assertEquals(passAtK(5, 0, 3), 0);
  assertEquals(passAtK(5, 3, 3), 1);
  assertThrows(() => passAtK(2, 1, 3), Error, "pass@3 needs at least 3 samples");
});

const tools = sandboxTools();
const hasSandbox = sandboxProblem(tools, false) === null;
const limits = { seconds: 3, memoryBytes: 256 * 2 ** 20, processes: 32, outputBytes: 2 ** 20 };
const sandboxed = (source: string, stdin = "") =>
  runSandboxed({ language: "python", source, stdin }, { limits });

/** Processes whose command line holds `marker` (left behind by a sandboxed program). */
function running(marker: string): number {
  const out = new Deno.Command("pgrep", { args: ["-c", "-f", marker] }).outputSync();
  return Number(new TextDecoder().decode(out.stdout).trim()) || 0;
}

Deno.test({
  name:
    "the sandbox contains hostile programs: each is reported, nothing outside is touched, no process is left",
  ignore: !hasSandbox,
  fn: async () => {
    const home = Deno.env.get("HOME") ?? "/root";
    const outside = await Deno.makeTempDir({ prefix: "sandbox_outside_" });
    const server = Deno.listen({ hostname: "127.0.0.1", port: 0 }); // reachable unless isolated
    const port = (server.addr as Deno.NetAddr).port;
    const cases: [string, string, (r: Awaited<ReturnType<typeof sandboxed>>) => boolean][] = [
      [
        "reads /etc/passwd",
        "print(open('/etc/passwd').read())",
        (r) => r.status === "exit" && !r.stdout.includes("root:"),
      ],
      [
        "lists the user's home",
        `import os; print(os.listdir(${JSON.stringify(home)}))`,
        (r) => r.status === "exit" && r.stdout === "",
      ],
      [
        "writes outside its directory",
        `open(${JSON.stringify(outside + "/pwned")}, "w").write("x")`,
        (r) => r.status === "exit",
      ],
      [
        "writes to /usr",
        "open('/usr/pwned', 'w')",
        (r) => r.status === "exit" && /Read-only/.test(r.stderrTail),
      ],
      [
        "connects to a server on the host's loopback",
        `import socket; socket.create_connection(('127.0.0.1', ${port}), timeout=2); print('connected')`,
        (r) => r.status === "exit" && !r.stdout.includes("connected"),
      ],
      [
        "fork-bombs",
        "import os\nwhile True: os.fork()",
        (r) => r.status === "timeout" || r.status === "exit",
      ],
      [
        "forks until refused",
        "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(30); os._exit(0)\n        n += 1\nexcept OSError:\n    print(n)",
        (r) => r.status === "ok" && Number(r.stdout) < limits.processes,
      ],
      [
        "allocates 10 GB",
        "x = bytearray(10 * 1024**3); print('allocated')",
        (r) => r.status === "memory",
      ],
      [
        "sleeps forever",
        "import time; time.sleep(10**6)",
        (r) => r.status === "timeout" && r.seconds < 6,
      ],
      [
        "prints 1 GB",
        "import sys\nwhile True: sys.stdout.write('x' * 65536)",
        (r) => r.status === "output" && r.stdout.length <= 2 ** 20,
      ],
      [
        "leaves a background process",
        "import subprocess\nsubprocess.Popen(['sleep', '987'])\nprint('left')",
        (r) => r.status === "ok",
      ],
    ];
    for (const [what, source, ok] of cases) {
      const r = await sandboxed(source);
      assert(
        ok(r),
        `${what}: ${r.status} ${r.code} ${r.signal} ${r.stdout.slice(0, 80)} ${
          r.stderrTail.slice(-200)
        }`,
      );
    }
    server.close();
    assertEquals([...Deno.readDirSync(outside)].length, 0, "nothing written outside");
    await Deno.remove(outside);
    let pwned = false;
    try {
      Deno.statSync("/usr/pwned");
      pwned = true;
    } catch { /* good */ }
    assert(!pwned, "/usr untouched");
    assertEquals(running("sleep 987"), 0, "the background process died with its sandbox");
    assertEquals(running("em-sandbox"), 0, "no sandboxed process left");
    // the evaluation carries on: the next program runs normally
    const after = await sandboxed("print(input()[::-1])", "olleh\n");
    assertEquals([after.status, after.stdout], ["ok", "hello\n"]);
  },
});

Deno.test({
  name:
    "scoreCode(): stdin/stdout tests, HumanEval-style check() and MBPP-style asserts; a second language",
  ignore: !hasSandbox,
  fn: async () => {
    const sum = parseCodeProblem({
      prompt: "Read two integers and print their sum.",
      tests: [{ input: "1 2\n", output: "3\n" }, { input: "10 -4\n", output: "6" }],
    }, "p:1");
    const right = "```python\na, b = map(int, input().split())\nprint(a + b)  \n```";
    const wrong = "```python\na, b = map(int, input().split())\nprint(a - b)\n```";
    const crash = "```python\nraise SystemExit(3)\n```";
    assertEquals((await scoreCode(sum, right, { limits })).verdict, "pass");
    const w = await scoreCode(sum, wrong, { limits });
    assertEquals([w.verdict, w.detail, w.passed], ["fail", "wrong output on test 1", 0]);
    assertEquals((await scoreCode(sum, crash, { limits })).detail, "exit 3");
    assertEquals((await scoreCode(sum, "I would add them.", { limits })).detail, "no code block");
    const js =
      "```javascript\nconst [a, b] = (await new Response(Deno.stdin.readable).text()).trim().split(' ').map(Number);\nconsole.log(a + b);\n```";
    assertEquals(
      (await scoreCode(sum, js, { limits: { ...limits, seconds: 20 } })).verdict,
      "pass",
    );
    const human = parseCodeProblem({
      prompt: "def add(a, b):",
      entry_point: "add",
      test:
        "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    }, "p:2");
    assertEquals(
      (await scoreCode(human, "```python\ndef add(a, b):\n    return a + b\n```", { limits }))
        .verdict,
      "pass",
    );
    const bad = await scoreCode(human, "```python\ndef add(a, b):\n    return a * b\n```", {
      limits,
    });
    assertEquals(bad.verdict, "fail");
    assert(bad.stderrTail.includes("AssertionError"), bad.stderrTail);
    const mbpp = parseCodeProblem({ prompt: "square", test: "assert sq(3) == 9" }, "p:3");
    assertEquals(
      (await scoreCode(mbpp, "```python\ndef sq(x): return x*x\n```", { limits })).verdict,
      "pass",
    );
    assertEquals(
      (await scoreCode(mbpp, "```python\ndef sq(x): return x\n```", { limits })).verdict,
      "fail",
    );
    assertEquals(
      (await scoreCode(mbpp, "```python\nwhile True: pass\n```", { limits })).verdict,
      "timeout",
    );
  },
});

Deno.test({
  name:
    "eval --task code --score on 20 hand-made responses (right, wrong, timeouts, hostile): every verdict as written",
  ignore: !hasSandbox,
  fn: async () => {
    const fixture = new URL("./fixtures/code/responses.jsonl", import.meta.url).pathname;
    const out = await Deno.makeTempFile({ suffix: ".jsonl" });
    const r = await runCli("../infer/eval_cli.ts", [
      "--task",
      "code",
      "--score",
      fixture,
      "--timeout",
      "3",
      "--out",
      out,
    ]);
    assertEquals(r.code, 0, r.stderr);
    assert(r.stdout.includes("| 20 | 20 | 30.0% |"), r.stdout);
    assert(r.stdout.includes("runs: pass 6, fail 3, error 8, timeout 2, memory 1"), r.stdout);
    const notes = (await Deno.readTextFile(fixture)).trim().split("\n").map((l) =>
      JSON.parse(l).note
    );
    const verdicts = (await Deno.readTextFile(out)).trim().split("\n")
      .map((l) => JSON.parse(l).runs[0].verdict);
    const want: Record<string, string> = {
      "hostile: allocates 10 GB": "memory",
      "hostile: sleeps forever": "timeout",
      "infinite loop": "timeout",
      "hostile: prints forever": "error",
      "right, leaves a background process": "pass",
      "right, JavaScript": "pass",
    };
    notes.forEach((n: string, i: number) => {
      if (want[n]) assertEquals(verdicts[i], want[n], n);
      if (n === "right" || n.startsWith("right,")) assertEquals(verdicts[i], "pass", n);
      if (n.startsWith("wrong")) assertEquals(verdicts[i], "fail", n);
    });
    await Deno.remove(out);
  },
});
