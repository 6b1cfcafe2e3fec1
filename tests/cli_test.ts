import { assert, assertEquals } from "@std/assert";

const CLI = new URL("../train/cli.ts", import.meta.url).pathname;

async function run(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-write", "--allow-env", CLI, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

Deno.test("train CLI without a WebGPU adapter says what to install, with no stack trace", async () => {
  // D3D12 does not exist on Linux, so no adapter is found.
  const r = await run(["--steps", "1"], { DENO_WEBGPU_BACKEND: "dx12" });
  assertEquals(r.code, 1);
  assert(r.stderr.includes("mesa-vulkan-drivers"), r.stderr);
  assert(!r.stderr.includes("    at "), `no stack trace: ${r.stderr}`);
});

Deno.test("train CLI rejects a bad flag value naming the flag", async () => {
  const r = await run(["--lr=-3"]);
  assertEquals(r.code, 2);
  assert(r.stderr.includes("--lr must be a positive number"), r.stderr);
  const u = await run(["--nope"]);
  assertEquals(u.code, 2);
  assert(u.stderr.includes("nope"), u.stderr);
});

Deno.test("train CLI demo runs a few steps and reports the loss", async () => {
  const r = await run(["--steps", "30", "--batch", "64"]);
  assertEquals(r.code, 0, r.stderr);
  assert(/loss [\d.]+ -> [\d.]+; held-out accuracy/.test(r.stdout), r.stdout);
});
