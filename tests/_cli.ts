/** Running the command lines from tests, without touching the GPU in the test process. */

/** Runs a CLI module (a path relative to tests/) with every permission; code, stdout, stderr. */
export async function runCli(module: string, args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(module, import.meta.url).pathname, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

/** A CLI running as a child process whose output can be waited on as it comes. */
export class CliProcess {
  readonly child: Deno.ChildProcess;
  stdout = "";
  stderr = "";
  readonly #done: Promise<Deno.CommandStatus>;
  #waiters: (() => void)[] = [];

  constructor(module: string, args: string[], command: string[] = []) {
    const cmd = [
      ...command,
      Deno.execPath(),
      "run",
      "-A",
      new URL(module, import.meta.url).pathname,
    ];
    this.child = new Deno.Command(cmd[0], {
      args: [...cmd.slice(1), ...args],
      env: { XDG_RUNTIME_DIR: "/tmp" },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const pump = async (stream: ReadableStream<Uint8Array>, key: "stdout" | "stderr") => {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        this[key] += chunk;
        this.#waiters.forEach((w) => w());
      }
    };
    this.#done = Promise.all([
      pump(this.child.stdout, "stdout"),
      pump(this.child.stderr, "stderr"),
    ]).then(() => this.child.status);
  }

  /** Resolves once stdout matches `pattern` (rejects after `seconds`, or if the process ends first). */
  waitFor(pattern: RegExp, seconds = 600): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`timed out waiting for ${pattern}`)),
        seconds * 1000,
      );
      const check = () => {
        if (pattern.test(this.stdout)) {
          clearTimeout(timer);
          resolve();
        }
      };
      this.#waiters.push(check);
      check();
      this.#done.then(() => {
        if (!pattern.test(this.stdout)) {
          clearTimeout(timer);
          reject(new Error(`exited before ${pattern}:\n${this.stdout}\n${this.stderr}`));
        }
      });
    });
  }

  /** The exit status, once the output is drained. */
  status(): Promise<Deno.CommandStatus> {
    return this.#done;
  }
}
