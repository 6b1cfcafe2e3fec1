/** Running the command lines from tests, without touching the GPU in the test process. */

/** Runs a CLI module (a path relative to tests/) with every permission; code, stdout, stderr. */
export async function runCli(module: string, args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(module, import.meta.url).pathname, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}
