/**
 * `deno task serve`: an OpenAI-compatible server over a Qwen checkpoint, with
 * continuous batching, EM-INF per request and LoRA adapters. Binds to
 * 127.0.0.1 unless told otherwise; SIGTERM (or Ctrl-C) stops accepting,
 * lets running requests finish (or cancels them after --drain-seconds) and
 * exits 0.
 * @module
 */
import { is, numberFlag, parseArgs, type ParsedArgs, quantizeFlag } from "@std/cli";
import { inferenceDryRun } from "../memory.ts";
import { initDeviceOrExplain } from "../../engine/device.ts";
import { loadModel } from "../../engine/model/checkpoint.ts";
import { LoraAdapters } from "../../engine/model/lora.ts";
import { DEMO_MODEL } from "../../demo/task.ts";
import { Engine } from "./engine.ts";
import { createHandler } from "./http.ts";
import { Metrics } from "./metrics.ts";

const HELP = `deno task serve [flags]

Serves a Hugging Face Qwen checkpoint through OpenAI's API (as vLLM does):
/v1/models, /v1/completions, /v1/chat/completions (streaming with server-sent
events), /v1/load_lora_adapter, /v1/unload_lora_adapter, /health, /metrics, and
SGLang's /update_weights_from_disk {"model_path"} (a trainer's new weights).
Requests may add "em_inf": true (or {lr, steps, kl, threshold}),
"adaptive_temperature": {alpha, delta}, "entropy": true, "return_token_ids": true.

  --model DIR               checkpoint or PEFT adapter directory (default: the demo model)
  --served-model-name NAME  the name clients pass as "model" (default: --model as given, or "demo")
  --host H                  address to bind (default 127.0.0.1; anything else exposes the server)
  --port N                  (default 8000)
  --api-key KEY             require "Authorization: Bearer KEY" on /v1 (default: none)
  --lora NAME=DIR           a PEFT LoRA adapter served as model NAME (repeatable)
  --max-batch N             sequences decoding at once: KV cache slots (default 64)
  --max-model-len N         tokens per sequence, prompt included (default: the model's, at most 2048)
  --max-queue N             requests waiting beyond the running ones before 429 (default 256)
  --max-body-kb N           largest request body (default 1024 KiB)
  --drain-seconds S         on SIGTERM, how long running requests may finish (default 30)
  --quantize int4|int8      quantize the linear layers at load (GPTQ/AWQ checkpoints need not)
  --dry-run                 print the GPU memory serving needs (weights, the KV cache of
                            --max-batch x --max-model-len, prefill, EM-INF) from config.json; exit
  --no-weight-check         skip the NaN/Inf check of the weights at load
  --help`;

/** Parses the flags; throws naming the flag. */
export function parseServeFlags(args: string[]) {
  const flags: ParsedArgs = parseArgs(args, {
    string: [
      "model",
      "served-model-name",
      "host",
      "port",
      "api-key",
      "max-batch",
      "max-model-len",
      "max-queue",
      "max-body-kb",
      "drain-seconds",
      "quantize",
    ],
    collect: ["lora"],
    boolean: ["no-weight-check", "dry-run", "help"],
  });
  const lora = ((flags.lora as string[] | undefined) ?? []).map((spec) => {
    const m = /^([^=]+)=(.+)$/.exec(spec);
    if (!m) throw new Error(`--lora must be NAME=DIR, got "${spec}"`);
    return { name: m[1], dir: m[2] };
  });
  const model = typeof flags.model === "string" ? flags.model : null;
  const o = {
    model,
    name: typeof flags["served-model-name"] === "string"
      ? flags["served-model-name"]
      : model ?? "demo",
    host: typeof flags.host === "string" ? flags.host : "127.0.0.1",
    port: numberFlag(flags, "port", is.nonNegativeInt) ?? 8000,
    apiKey: typeof flags["api-key"] === "string" ? flags["api-key"] : null,
    lora,
    maxBatch: numberFlag(flags, "max-batch", is.positiveInt) ?? 64,
    maxModelLen: numberFlag(flags, "max-model-len", is.positiveInt),
    maxQueue: numberFlag(flags, "max-queue", is.nonNegativeInt) ?? 256,
    maxBodyBytes: (numberFlag(flags, "max-body-kb", is.positiveInt) ?? 1024) * 1024,
    drainSeconds: numberFlag(flags, "drain-seconds", is.nonNegative) ?? 30,
    checkFinite: !flags["no-weight-check"],
    quantize: quantizeFlag(flags),
  };
  const names = [o.name, ...lora.map((l) => l.name)];
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice) throw new Error(`--lora: the name ${twice} is used twice`);
  return { flags, options: o };
}

export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseServeFlags(args);
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n\nRun with --help for the flags.`);
    return 2;
  }
  if (parsed.flags.help) {
    console.log(HELP);
    return 0;
  }
  const o = parsed.options;
  if (parsed.flags["dry-run"]) {
    try {
      console.log(
        await inferenceDryRun(o.model ?? DEMO_MODEL, {
          batch: o.maxBatch,
          context: o.maxModelLen,
          contextCap: 2048, // --max-model-len's default
          quantize: o.quantize,
          emInf: true, // any request may ask for it
          prefillChunk: Infinity, // a joining group's prompts are prefilled in one pass
        }),
      );
      return 0;
    } catch (e) {
      console.error(`error: ${(e as Error).message}`);
      return 1;
    }
  }
  if (!await initDeviceOrExplain()) return 1;
  const adapters = new Map<string, { adapters: LoraAdapters; path: string }>();
  let model;
  try {
    model = await loadModel(o.model ?? DEMO_MODEL, {
      checkFinite: o.checkFinite,
      quantize: o.quantize,
    });
    if (!model.tokenizer) throw new Error(`${o.model}/tokenizer.json not found: serving needs it`);
    for (const l of o.lora) {
      adapters.set(l.name, { adapters: await LoraAdapters.load(l.dir, model.config), path: l.dir });
    }
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    return 1;
  }
  const context = model.config.maxPositionEmbeddings;
  const maxModelLen = o.maxModelLen ?? Math.min(context, 2048);
  if (maxModelLen > context) {
    console.error(
      `error: --max-model-len ${maxModelLen} exceeds the model's max_position_embeddings ${context}`,
    );
    return 2;
  }
  const metrics = new Metrics();
  let engine: Engine;
  try {
    engine = new Engine(model, {
      maxBatch: o.maxBatch,
      maxModelLen,
      maxQueue: o.maxQueue,
      observe: (kind, s) => (kind === "ttft" ? metrics.ttft : metrics.tpot).observe(s),
    });
  } catch (e) {
    console.error(
      `error: the KV cache for --max-batch ${o.maxBatch} x --max-model-len ${maxModelLen} does not fit (${
        (e as Error).message
      }); lower either`,
    );
    return 1;
  }
  const t0 = performance.now();
  await engine.warmUp();
  console.log(
    `compiled the decoding pipelines in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  const handler = createHandler({
    engine,
    metrics,
    modelName: o.name,
    apiKey: o.apiKey,
    maxBodyBytes: o.maxBodyBytes,
    adapters,
    log: (l) => console.log(l),
  });
  if (o.host !== "127.0.0.1" && o.host !== "localhost" && o.apiKey === null) {
    console.error(`warning: --host ${o.host} exposes the server to the network with no --api-key`);
  }
  let server: Deno.HttpServer;
  const ready = Promise.withResolvers<void>();
  try {
    server = Deno.serve({
      hostname: o.host,
      port: o.port,
      onListen: ({ hostname, port }) => {
        console.log(
          `serving ${o.name} on http://${hostname}:${port}/v1 (max batch ${o.maxBatch}, context ${maxModelLen}, KV cache ${
            (engine.cacheBytes / 2 ** 20).toFixed(1)
          } MiB${adapters.size ? `, adapters ${[...adapters.keys()].join(", ")}` : ""})`,
        );
        ready.resolve();
      },
      onError: (e) => {
        console.error(`error: ${(e as Error).message}`);
        return new Response(
          JSON.stringify({
            error: { message: "internal error", type: "server_error", param: null, code: null },
          }),
          { status: 500 },
        );
      },
    }, handler);
  } catch (e) {
    console.error(`error: cannot listen on ${o.host}:${o.port} (${(e as Error).message})`);
    return 1;
  }
  await ready.promise;
  // SIGTERM/SIGINT: stop accepting, let what runs finish (or cancel it after the grace), exit 0
  const stopped = Promise.withResolvers<void>();
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    console.log("stopping: no new requests; finishing the running ones");
    const cancel = setTimeout(() => engine.cancelAll(), o.drainSeconds * 1000);
    Promise.all([engine.drain(), server.shutdown()]).finally(() => {
      clearTimeout(cancel);
      stopped.resolve();
    });
  };
  for (const s of ["SIGTERM", "SIGINT"] as const) {
    try {
      Deno.addSignalListener(s, stop);
    } catch { /* not a signal here */ }
  }
  await Promise.race([stopped.promise, server.finished]);
  engine.dispose();
  engine.model.dispose();
  console.log("stopped");
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
