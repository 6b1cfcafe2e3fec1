/**
 * Running untrusted, model-written programs. Each run gets a fresh temporary
 * directory and runs as a child process inside bubblewrap (`bwrap`): only
 * /usr is visible (read-only), the directory is the one writable place, /tmp
 * is private, and there is no network, no other process and no host name
 * (every namespace unshared); the sandbox dies with its parent. Resource
 * limits are rlimits set by `prlimit` (CPU seconds, address space, processes,
 * file size, open files) plus a wall-clock timer and a cap on captured
 * output. As root, each concurrent run gets a user id of its own (setpriv):
 * the kernel counts a process limit per user (and not for root), so runs in
 * parallel cannot starve each other, and whatever a run leaves behind is
 * killed by its user id before the id is used again.
 *
 * Without bwrap the caller must opt in to `unsafe` (the program then runs
 * with the limits but no isolation).
 * @module
 */

/** How a run ended. */
export type RunStatus = "ok" | "exit" | "timeout" | "memory" | "output" | "error";

export interface SandboxLimits {
  /** Wall-clock seconds before the run is killed. */
  seconds: number;
  /** Address space in bytes (Python); V8's heap for JavaScript. */
  memoryBytes: number;
  /** Processes and threads of the sandbox user. */
  processes: number;
  /** Bytes of stdout captured (and of any file written) before the run is stopped. */
  outputBytes: number;
}

export const DEFAULT_LIMITS: SandboxLimits = {
  seconds: 10,
  memoryBytes: 1024 * 2 ** 20,
  processes: 64,
  outputBytes: 4 * 2 ** 20,
};

/** A program to run: its language and source, with stdin. */
export interface Program {
  language: "python" | "javascript" | "typescript";
  source: string;
  stdin?: string;
}

export interface RunResult {
  status: RunStatus;
  /** The exit code, or null when killed by a signal. */
  code: number | null;
  signal: string | null;
  stdout: string;
  /** The last 4 KiB of stderr. */
  stderrTail: string;
  seconds: number;
}

/** What is installed: bwrap, prlimit, setpriv, python3; or why code cannot run. */
export interface SandboxTools {
  bwrap: string | null;
  prlimit: string | null;
  setpriv: string | null;
  python: string | null;
}

const find = (names: string[]) => {
  for (const n of names) {
    try {
      if (Deno.statSync(n).isFile) return n;
    } catch { /* next */ }
  }
  return null;
};

/** The tools this machine has (Debian paths; `which` is not assumed). */
export function sandboxTools(): SandboxTools {
  return {
    bwrap: find(["/usr/bin/bwrap", "/bin/bwrap", "/usr/local/bin/bwrap"]),
    prlimit: find(["/usr/bin/prlimit", "/bin/prlimit"]),
    setpriv: find(["/usr/bin/setpriv", "/bin/setpriv"]),
    python: find(["/usr/bin/python3", "/usr/local/bin/python3"]),
  };
}

/** Why sandboxed runs cannot work here (what to install), or null. */
export function sandboxProblem(tools: SandboxTools, unsafe: boolean): string | null {
  if (!tools.python) {
    return "running Python programs needs python3 at /usr/bin/python3 (Debian: apt-get install python3)";
  }
  if (!tools.prlimit) return "resource limits need prlimit (Debian: apt-get install util-linux)";
  if (!tools.bwrap && !unsafe) {
    return "running model-written code needs a sandbox: install bubblewrap (Debian: apt-get install bubblewrap), or pass --unsafe-no-sandbox to run it without isolation";
  }
  return null;
}

/** User ids for sandboxed runs as root: unused by the system, one per concurrent run. */
const SANDBOX_UIDS = 910000;
const freeUids: number[] = [];
let nextUid = SANDBOX_UIDS;

function takeUid(): number {
  return freeUids.pop() ?? nextUid++;
}

/** How many processes real user `uid` runs (pgrep; Deno may not read /proc itself). */
async function processCount(uid: number): Promise<number> {
  const out = await new Deno.Command("pgrep", { args: ["-c", "-U", String(uid)] }).output();
  return Number(new TextDecoder().decode(out.stdout).trim()) || 0;
}

/** Kills what a run's user left behind, waits until it is gone, then frees the id. */
async function releaseUid(uid: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await processCount(uid) === 0) {
      freeUids.push(uid);
      return;
    }
    await new Deno.Command("pkill", { args: ["-KILL", "-U", String(uid)] }).output();
    await new Promise((r) => setTimeout(r, 10));
  }
  // still there after 2 s (zombies of a dead parent): never reuse this id
}

/** This process's user id: which user sandboxed programs may run as depends on it. */
function currentUid(): number | null {
  try {
    return Deno.uid();
  } catch (e) {
    throw new Error(
      `the code sandbox needs this process's user id: run with --allow-sys=uid (${
        (e as Error).message
      })`,
    );
  }
}

function isRoot(): boolean {
  return currentUid() === 0;
}

/** Processes and threads the current user runs (RLIMIT_NPROC counts them all). */
function userTasks(uid: number): number {
  try {
    const out = new Deno.Command("ps", { args: ["-L", "-U", String(uid), "-o", "lwp="] })
      .outputSync();
    return new TextDecoder().decode(out.stdout).trim().split("\n").filter(Boolean).length;
  } catch {
    return 0;
  }
}

/** A copy of this Deno binary the sandbox user can read (the original may sit in /root). */
let sandboxDeno: Promise<string> | null = null;
function denoForSandbox(): Promise<string> {
  sandboxDeno ??= (async () => {
    const dir = "/tmp/em-sandbox-bin";
    const path = `${dir}/deno-${Deno.version.deno}`;
    try {
      await Deno.stat(path);
    } catch {
      await Deno.mkdir(dir, { recursive: true, mode: 0o755 });
      const tmp = `${path}.tmp-${Deno.pid}`;
      await Deno.copyFile(Deno.execPath(), tmp);
      await Deno.chmod(tmp, 0o755);
      await Deno.rename(tmp, path);
    }
    return path;
  })();
  return sandboxDeno;
}

/** The command line that runs `file` (in the work directory) for its language. */
async function interpreter(
  p: Program,
  tools: SandboxTools,
  limits: SandboxLimits,
  isolated: boolean,
) {
  if (p.language === "python") {
    return { argv: [tools.python!, "-I", "prog.py"], file: "prog.py", binds: [] };
  }
  const deno = isolated ? await denoForSandbox() : Deno.execPath();
  const file = p.language === "typescript" ? "prog.ts" : "prog.js";
  const heap = Math.max(16, Math.floor(limits.memoryBytes / 2 ** 20));
  return {
    argv: [
      isolated ? "/opt/deno" : deno,
      "run",
      "--no-prompt",
      "--quiet",
      `--v8-flags=--max-old-space-size=${heap}`,
      file,
    ],
    file,
    binds: isolated ? ["--ro-bind", deno, "/opt/deno"] : [],
  };
}

/**
 * Runs a program in a fresh temporary directory under the limits; the
 * directory is removed afterwards. `unsafe` runs without bwrap (limits only).
 */
export async function runSandboxed(
  p: Program,
  options: { limits?: Partial<SandboxLimits>; unsafe?: boolean; tools?: SandboxTools } = {},
): Promise<RunResult> {
  const limits = { ...DEFAULT_LIMITS, ...options.limits };
  const tools = options.tools ?? sandboxTools();
  const problem = sandboxProblem(tools, options.unsafe === true);
  if (problem) throw new Error(problem);
  const isolated = tools.bwrap !== null && !options.unsafe;
  const dir = await Deno.makeTempDir({ prefix: "em-sandbox-" });
  const started = performance.now();
  const root = isRoot();
  const uid = root && isolated && tools.setpriv ? takeUid() : null;
  try {
    const run = await interpreter(p, tools, limits, isolated);
    await Deno.writeTextFile(`${dir}/${run.file}`, p.source);
    if (uid !== null) await Deno.chown(dir, uid, uid);
    // V8 reserves far more address space than it uses: JavaScript's memory limit is its heap flag
    const addressSpace = p.language === "python" ? [`--as=${limits.memoryBytes}`] : [];
    const nproc = uid !== null ? limits.processes : userTasks(currentUid()!) + limits.processes;
    const cpu = Math.ceil(limits.seconds);
    const rlimits = [
      tools.prlimit!,
      `--cpu=${cpu}`,
      ...addressSpace,
      `--nproc=${nproc}`,
      `--fsize=${limits.outputBytes}`,
      "--nofile=64",
      "--core=0",
      "--",
    ];
    const sandbox = isolated
      ? [
        tools.bwrap!,
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/bin",
        "/bin",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--bind",
        dir,
        "/work",
        ...run.binds,
        "--chdir",
        "/work",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "HOME",
        "/work",
        "--setenv",
        "DENO_DIR",
        "/work/.deno",
        "--setenv",
        "DENO_NO_UPDATE_CHECK",
        "1",
        "--",
      ]
      : [];
    const drop = uid !== null
      ? [tools.setpriv!, `--reuid=${uid}`, `--regid=${uid}`, "--clear-groups"]
      : [];
    const argv = [...drop, ...rlimits, ...sandbox, ...run.argv];
    const child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      cwd: dir,
      clearEnv: true,
      env: {
        PATH: "/usr/bin:/bin",
        HOME: dir,
        DENO_DIR: `${dir}/.deno`,
        DENO_NO_UPDATE_CHECK: "1",
      },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let killed: "timeout" | "output" | null = null;
    const kill = (why: "timeout" | "output") => {
      killed ??= why;
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
    };
    const timer = setTimeout(() => kill("timeout"), limits.seconds * 1000);
    const writer = child.stdin.getWriter();
    writer.write(new TextEncoder().encode(p.stdin ?? "")).catch(() => {}).finally(() =>
      writer.close().catch(() => {})
    );
    const [stdout, stderr] = await Promise.all([
      capture(child.stdout, limits.outputBytes, () => kill("output")),
      capture(child.stderr, limits.outputBytes, () => {}, 4096),
    ]);
    const status = await child.status;
    clearTimeout(timer);
    const seconds = (performance.now() - started) / 1000;
    const text = new TextDecoder();
    const out = text.decode(stdout);
    const err = text.decode(stderr);
    const result = (s: RunStatus): RunResult => ({
      status: s,
      code: status.signal ? null : status.code,
      signal: status.signal,
      stdout: out,
      stderrTail: err.slice(-4096),
      seconds,
    });
    if (killed) return result(killed);
    // RLIMIT_CPU sends SIGXCPU, then SIGKILL
    if (status.signal === "SIGXCPU" || (status.signal === "SIGKILL" && seconds >= cpu)) {
      return result("timeout");
    }
    if (
      /MemoryError|Cannot allocate memory|JavaScript heap out of memory|out of memory/i.test(err)
    ) {
      return result("memory");
    }
    if (/File size limit exceeded/.test(err) || status.signal === "SIGXFSZ") {
      return result("output");
    }
    return result(status.success ? "ok" : status.signal ? "error" : "exit");
  } finally {
    if (uid !== null) await releaseUid(uid);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/**
 * Reads a stream, keeping at most `limit` bytes; `over` is called once past
 * the limit (the rest is drained and dropped). With `tail`, keeps the last
 * `tail` bytes instead of the first.
 */
async function capture(
  stream: ReadableStream<Uint8Array>,
  limit: number,
  over: () => void,
  tail?: number,
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let kept = 0;
  let total = 0;
  for await (const chunk of stream) {
    total += chunk.length;
    if (tail !== undefined) {
      parts.push(chunk);
      kept += chunk.length;
      while (kept - parts[0].length >= tail) kept -= parts.shift()!.length;
      continue;
    }
    if (kept < limit) {
      const take = chunk.subarray(0, limit - kept);
      parts.push(take);
      kept += take.length;
    }
    if (total > limit) over();
  }
  const out = new Uint8Array(kept);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
