/**
 * `deno task build:web`: bundles the browser entry point (web/engine.ts, the
 * library) and the playground (web/app.ts) into web/dist with `deno bundle`.
 * @module
 */
const WEB = new URL(".", import.meta.url).pathname;

/** Runs `deno bundle` for both entries; throws with its output when it fails. */
export async function buildWeb(): Promise<void> {
  for (const entry of ["engine", "app"]) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "bundle",
        "--quiet",
        "--platform",
        "browser",
        // Deno's own wgpu backend choice, imported only when `Deno` exists
        "--external",
        "*/backend_deno.ts",
        "--minify",
        "--output",
        `${WEB}dist/${entry}.js`,
        `${WEB}${entry}.ts`,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw new Error(
        `deno bundle web/${entry}.ts failed:\n${new TextDecoder().decode(out.stderr)}`,
      );
    }
  }
}

if (import.meta.main) {
  await buildWeb();
  console.log(`built ${WEB}dist/engine.js and ${WEB}dist/app.js`);
}
