/**
 * `deno task web [--port N] [--model DIR]`: builds the browser bundle (web/dist)
 * and serves the playground on 127.0.0.1, with the model's files under
 * /model/. Open the printed address in a browser with WebGPU.
 * @module
 */
import { is, numberFlag, parseArgs } from "@std/cli";
import { buildWeb } from "./build.ts";

const HELP = `deno task web [--port N] [--model DIR]

Builds web/dist (deno task build:web) and serves the playground on
http://127.0.0.1:PORT/ with the checkpoint's files under /model/.

  --port N      port (default 8080; 0: any free port, printed)
  --model DIR   checkpoint served to the page (default: the demo model)
  --help        this text`;

const WEB = new URL(".", import.meta.url).pathname;
const DEMO_MODEL = new URL("../demo/model", import.meta.url).pathname;

/** The files the page may fetch, by URL path. */
const PAGE: Record<string, [string, string]> = {
  "/": ["index.html", "text/html; charset=utf-8"],
  "/index.html": ["index.html", "text/html; charset=utf-8"],
  "/app.js": ["dist/app.js", "text/javascript; charset=utf-8"],
  "/engine.js": ["dist/engine.js", "text/javascript; charset=utf-8"],
};
/** Checkpoint files served under /model/ (nothing else of the directory). */
const MODEL_FILES = new Set([
  "config.json",
  "generation_config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "model.safetensors",
  "model.safetensors.index.json",
]);

/** A checkpoint file the page may fetch (shards by their Hugging Face names). */
const served = (name: string) =>
  MODEL_FILES.has(name) || /^model-\d{5}-of-\d{5}\.safetensors$/.test(name);

export function handler(modelDir: string): (req: Request) => Promise<Response> {
  return async (req) => {
    const path = new URL(req.url).pathname;
    let file: string | null = null;
    let type = "application/octet-stream";
    if (path === "/model/files.json") {
      // the listing the page passes to urlSource: it fetches no file that is absent
      const names: string[] = [];
      for await (const e of Deno.readDir(modelDir)) if (served(e.name)) names.push(e.name);
      return Response.json(names.sort(), { headers: { "cache-control": "no-store" } });
    }
    if (PAGE[path]) [file, type] = [`${WEB}${PAGE[path][0]}`, PAGE[path][1]];
    else if (path.startsWith("/model/")) {
      const name = path.slice("/model/".length);
      // shards are listed by the index; any other name is refused (no path traversal)
      if (served(name)) {
        file = `${modelDir}/${name}`;
        if (name.endsWith(".json")) type = "application/json";
      }
    }
    if (!file) return new Response("not found", { status: 404 });
    try {
      return new Response((await Deno.open(file)).readable, {
        headers: { "content-type": type, "cache-control": "no-store" },
      });
    } catch {
      return new Response("not found", { status: 404 });
    }
  };
}

if (import.meta.main) {
  let flags;
  try {
    flags = parseArgs(Deno.args, { string: ["port", "model"], boolean: ["help"] });
  } catch (e) {
    console.error(`error: ${(e as Error).message}\nRun with --help for the flags.`);
    Deno.exit(2);
  }
  if (flags.help) {
    console.log(HELP);
    Deno.exit(0);
  }
  let port: number;
  try {
    port = numberFlag(flags, "port", is.nonNegativeInt) ?? 8080;
    if (port > 65535) throw new Error(`--port must be at most 65535, got ${port}`);
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(2);
  }
  const modelDir = (flags.model as string | undefined) ?? DEMO_MODEL;
  try {
    await Deno.stat(`${modelDir}/config.json`);
  } catch {
    console.error(`error: --model: ${modelDir}/config.json not found`);
    Deno.exit(2);
  }
  try {
    await buildWeb();
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(1);
  }
  try {
    Deno.serve({
      hostname: "127.0.0.1",
      port,
      onListen: ({ port }) => console.log(`playground: http://127.0.0.1:${port}/`),
    }, handler(modelDir));
  } catch (e) {
    console.error(
      e instanceof Deno.errors.AddrInUse
        ? `error: port ${port} is in use: choose another with --port N (0: any free port)`
        : `error: ${(e as Error).message}`,
    );
    Deno.exit(1);
  }
}
