/**
 * `deno task bench:serve [--big]`: `deno task serve` under streaming
 * clients on loopback, in one run on one server: aggregate output tokens/s
 * and time to first token (p50, p95) at 1, 4, 16 and 64 concurrent clients,
 * each against one request at a time (concurrency 1). Every request asks
 * for exactly `--tokens` tokens (ignore_eos). `--big` adds the
 * Qwen2.5-0.5B-shaped random model (bf16) at 1 and 8 clients.
 * @module
 */
import { parseArgs } from "@std/cli";
import { initDevice } from "../engine/device.ts";
import { parseQwenConfig } from "../engine/model/qwen.ts";
import { randomModel } from "../engine/model/init.ts";
import { saveModel } from "../engine/model/checkpoint.ts";
import { heldOutProblems } from "../demo/task.ts";
import { QWEN25_05B } from "./_qwen05b.ts";

const flags = parseArgs(Deno.args, { string: ["tokens", "requests"], boolean: ["big"] });
const TOKENS = Number(flags.tokens ?? 48);

interface Row {
  model: string;
  clients: number;
  requests: number;
  tokensPerSecond: number;
  ttftP50: number;
  ttftP95: number;
}

async function startServer(args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../infer/serve/cli.ts", import.meta.url).pathname,
      "--port",
      "0",
      ...args,
    ],
    env: { XDG_RUNTIME_DIR: "/tmp" },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!/127\.0\.0\.1:(\d+)\/v1/.test(out)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`the server exited:\n${out}`);
    out += value;
  }
  (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })();
  return { child, url: `http://127.0.0.1:${/127\.0\.0\.1:(\d+)\/v1/.exec(out)![1]}` };
}

/** One streaming request: its time to first token and tokens received. */
async function request(url: string, model: string, prompt: string, seed: number) {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model,
      prompt,
      max_tokens: TOKENS,
      ignore_eos: true,
      seed,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let ttft = 0;
  let tokens = 0;
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const events = buffer.split("\n\n");
    buffer = events.pop()!;
    for (const e of events) {
      if (!e.startsWith("data: ") || e === "data: [DONE]") continue;
      const c = JSON.parse(e.slice(6));
      if (c.choices?.[0]?.text && ttft === 0) ttft = (performance.now() - t0) / 1000;
      if (c.usage) tokens = c.usage.completion_tokens;
    }
  }
  return { ttft, tokens };
}

const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};

/** `clients` clients, each sending `each` requests one after another. */
async function scenario(
  url: string,
  model: string,
  name: string,
  clients: number,
  each: number,
  prompts: string[],
): Promise<Row> {
  const ttfts: number[] = [];
  let tokens = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: clients }, async (_, c) => {
    for (let k = 0; k < each; k++) {
      const i = c * each + k;
      const r = await request(url, model, prompts[i % prompts.length], i);
      ttfts.push(r.ttft);
      tokens += r.tokens;
    }
  }));
  const seconds = (performance.now() - t0) / 1000;
  return {
    model: name,
    clients,
    requests: clients * each,
    tokensPerSecond: tokens / seconds,
    ttftP50: quantile(ttfts, 0.5),
    ttftP95: quantile(ttfts, 0.95),
  };
}

async function bench(
  model: string,
  name: string,
  servedAs: string,
  levels: number[],
  prompts: string[],
  each: (c: number) => number,
  extra: string[] = [],
) {
  const { child, url } = await startServer([
    "--model",
    model,
    "--served-model-name",
    servedAs,
    ...extra,
  ]);
  const rows: Row[] = [];
  try {
    await request(url, servedAs, prompts[0], 0); // compile the pipelines
    for (const c of levels) {
      const row = await scenario(url, servedAs, name, c, each(c), prompts);
      rows.push(row);
      console.error(`${name}: ${c} clients, ${row.tokensPerSecond.toFixed(1)} tok/s`);
    }
  } finally {
    child.kill("SIGTERM");
    await child.status;
  }
  return rows;
}

const problems = heldOutProblems(256).map((p) => p.prompt);
const rows = await bench(
  new URL("../demo/model", import.meta.url).pathname,
  "demo (0.79M)",
  "demo",
  [1, 4, 16, 64],
  problems,
  (c) => Math.max(4, Math.ceil(16 / c)),
);
if (flags.big) {
  // the 0.5B shape with random bf16 weights and the real Qwen tokenizer
  await initDevice();
  const dir = await Deno.makeTempDir({ prefix: "serve_bench_05b_" });
  const config = parseQwenConfig(QWEN25_05B);
  const model = randomModel(config, { dtype: "bf16", seed: 1 });
  await saveModel(model, `${dir}/model`);
  model.dispose();
  const tok = new URL("../tests/fixtures/qwen-tokenizer/", import.meta.url).pathname;
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(`${tok}${f}`, `${dir}/model/${f}`);
  }
  const words = [
    "What is 17 times 23?",
    "Name a prime above 100.",
    "Summarise entropy.",
    "Count to five.",
  ];
  rows.push(
    ...await bench(`${dir}/model`, "Qwen2.5-0.5B shape, bf16", "qwen05b", [1, 8], words, () => 2, [
      "--max-model-len",
      "256",
      "--max-batch",
      "16",
    ]),
  );
  await Deno.remove(dir, { recursive: true });
}

console.log(
  `\nstreaming clients on loopback, ${TOKENS} tokens per request (ignore_eos), one server per model\n`,
);
console.log(
  "| model | clients | requests | output tok/s | vs one at a time | TTFT p50 (ms) | TTFT p95 (ms) | TTFT p95 vs one at a time |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
for (const r of rows) {
  const one = rows.find((x) => x.model === r.model && x.clients === 1)!;
  console.log(
    `| ${r.model} | ${r.clients} | ${r.requests} | ${r.tokensPerSecond.toFixed(1)} | ${
      (r.tokensPerSecond / one.tokensPerSecond).toFixed(2)
    }x | ${(1000 * r.ttftP50).toFixed(0)} | ${(1000 * r.ttftP95).toFixed(0)} | ${
      (r.ttftP95 / one.ttftP95).toFixed(2)
    }x |`,
  );
}
