/**
 * `deno task serve` through the official OpenAI client (npm `openai`,
 * unmodified) and raw HTTP, against servers started as child processes on
 * loopback: completions, chat, streaming, logprobs, n, stop, seeds, an
 * adapter by name, EM-INF through extra_body; a bounded load test; a client
 * that leaves mid-stream; every error case; SIGTERM with requests in flight.
 */
import OpenAI from "openai";
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { writeSafetensors } from "../engine/safetensors.ts";
import { Rng } from "../engine/random.ts";
import { CliProcess, runCli } from "./_cli.ts";

const SERVE = "../infer/serve/cli.ts";
const DEMO = new URL("../demo/model", import.meta.url).pathname;

/** A copy of the demo model with a chat template (the user's content) and a LoRA adapter for it. */
async function fixtures(): Promise<{ model: string; adapter: string; dir: string }> {
  const dir = await Deno.makeTempDir({ prefix: "serve_test_" });
  const model = `${dir}/model`;
  await Deno.mkdir(model);
  for await (const e of Deno.readDir(DEMO)) {
    if (e.isFile) await Deno.copyFile(`${DEMO}/${e.name}`, `${model}/${e.name}`);
  }
  const cfg = JSON.parse(await Deno.readTextFile(`${model}/tokenizer_config.json`));
  cfg.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}";
  await Deno.writeTextFile(`${model}/tokenizer_config.json`, JSON.stringify(cfg));
  // a PEFT adapter on q and v of every layer, written without a GPU
  const adapter = `${dir}/adapter`;
  await Deno.mkdir(adapter);
  const rng = new Rng(5);
  const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
  for (let i = 0; i < 4; i++) {
    for (const [m, out] of [["q_proj", 128], ["v_proj", 64]] as const) {
      const p = `base_model.model.model.layers.${i}.self_attn.${m}`;
      const a = Float32Array.from({ length: 4 * 128 }, () => 0.2 * rng.normal());
      const b = Float32Array.from({ length: out * 4 }, () => 0.2 * rng.normal());
      tensors[`${p}.lora_A.weight`] = { dtype: "F32", shape: [4, 128], data: a };
      tensors[`${p}.lora_B.weight`] = { dtype: "F32", shape: [out, 4], data: b };
    }
  }
  await writeSafetensors(`${adapter}/adapter_model.safetensors`, tensors);
  await Deno.writeTextFile(
    `${adapter}/adapter_config.json`,
    JSON.stringify({
      peft_type: "LORA",
      base_model_name_or_path: model,
      r: 4,
      lora_alpha: 8,
      target_modules: ["q_proj", "v_proj"],
    }),
  );
  return { model, adapter, dir };
}

/** A server as a child process on a free port. */
async function serve(args: string[]): Promise<{ p: CliProcess; url: string }> {
  const p = new CliProcess(SERVE, ["--port", "0", ...args]);
  await p.waitFor(/serving .* on http:\/\/127\.0\.0\.1:\d+\/v1/, 300);
  const port = /127\.0\.0\.1:(\d+)\/v1/.exec(p.stdout)![1];
  return { p, url: `http://127.0.0.1:${port}` };
}

async function stop(p: CliProcess): Promise<Deno.CommandStatus> {
  p.child.kill("SIGTERM");
  return await p.status();
}

/** A gauge of /metrics. */
async function gauge(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1]);
}

const { model, adapter, dir } = await fixtures();

Deno.test("the OpenAI client: completions, chat, streaming, logprobs, n, stop, seeds, an adapter, EM-INF in extra_body", async () => {
  const { p, url } = await serve([
    "--model",
    model,
    "--served-model-name",
    "demo",
    "--lora",
    `sharp=${adapter}`,
  ]);
  try {
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused" });
    const models = await client.models.list();
    assertEquals(models.data.map((m) => m.id), ["demo", "sharp"]);
    // completions: greedy answers a sum; usage counts tokens
    const c = await client.completions.create({
      model: "demo",
      prompt: "537+268=",
      max_tokens: 5,
      temperature: 0,
    });
    assertEquals(c.choices[0].finish_reason, "stop");
    assert(/^\d+$/.test(c.choices[0].text), c.choices[0].text);
    assertEquals(c.usage?.prompt_tokens, 8);
    // chat, with the model's template
    const chat = await client.chat.completions.create({
      model: "demo",
      messages: [{ role: "user", content: "537+268=" }],
      max_tokens: 5,
      temperature: 0,
    });
    assertEquals(chat.choices[0].message.content, c.choices[0].text);
    // streaming chat: the pieces add up to the whole; usage at the end
    const stream = await client.chat.completions.create({
      model: "demo",
      messages: [{ role: "user", content: "537+268=" }],
      max_tokens: 5,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let streamed = "";
    let usage = null;
    for await (const chunk of stream) {
      streamed += chunk.choices[0]?.delta?.content ?? "";
      usage = chunk.usage ?? usage;
    }
    assertEquals(streamed, c.choices[0].text);
    assertEquals(usage?.completion_tokens, c.usage?.completion_tokens);
    // logprobs with top alternatives, n choices, a stop string
    const lp = await client.chat.completions.create({
      model: "demo",
      messages: [{ role: "user", content: "64*23=" }],
      max_tokens: 5,
      logprobs: true,
      top_logprobs: 3,
      n: 3,
      seed: 11,
    });
    assertEquals(lp.choices.length, 3);
    for (const ch of lp.choices) {
      const content = ch.logprobs!.content!;
      // one entry per character (the demo spells), and as vLLM one for the eos that stopped it
      const eos = ch.finish_reason === "stop" ? 1 : 0;
      assertEquals(content.length, [...ch.message.content!].length + eos);
      for (const t of content) {
        assert(t.logprob <= 0 && t.top_logprobs.length === 3, JSON.stringify(t));
        assert(
          t.top_logprobs[0].logprob >= t.logprob - 1e-6,
          "the top alternative is at least as likely",
        );
      }
    }
    const stopped = await client.completions.create({
      model: "demo",
      prompt: "64*23=",
      max_tokens: 5,
      temperature: 0,
      stop: ["4"],
    });
    assert(!stopped.choices[0].text.includes("4"), stopped.choices[0].text);
    // seeds reproduce
    const sample = (seed: number) =>
      client.completions.create({ model: "demo", prompt: "537+268=", max_tokens: 5, seed, n: 4 })
        .then((r) => r.choices.map((x) => x.text));
    assertEquals(await sample(7), await sample(7));
    // the adapter by name changes the answers; the base stays as it was
    const base = await client.completions.create({
      model: "demo",
      prompt: "123+456=",
      max_tokens: 5,
      temperature: 0,
      logprobs: 0,
    });
    const sharp = await client.completions.create({
      model: "sharp",
      prompt: "123+456=",
      max_tokens: 5,
      temperature: 0,
      logprobs: 0,
    });
    assert(
      JSON.stringify(base.choices[0].logprobs?.token_logprobs) !==
        JSON.stringify(sharp.choices[0].logprobs?.token_logprobs),
      "the adapter changes the distribution",
    );
    // EM-INF through extra_body: the same tokens as `deno task generate --em-inf` with the seed
    const em = await client.completions.create({
      model: "demo",
      prompt: "537+268=",
      max_tokens: 5,
      seed: 3,
      // @ts-ignore: vLLM-style extensions travel in the body (extra_body in Python)
      em_inf: true,
      entropy: true,
    });
    const gen = await runCli("../infer/cli.ts", [
      "--model",
      model,
      "--prompt",
      "537+268=",
      "--max-new-tokens",
      "5",
      "--em-inf",
      "--seed",
      "3",
    ]);
    assertEquals(gen.code, 0, gen.stderr);
    assertEquals(em.choices[0].text, gen.stdout.split("\n")[0]);
    // token ids come back exactly (vLLM's return_token_ids)
    const ids = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "demo",
        prompt: [5, 3, 7, 10],
        max_tokens: 4,
        temperature: 0,
        return_token_ids: true,
      }),
    }).then((r) => r.json());
    assertEquals(ids.choices[0].prompt_token_ids, [5, 3, 7, 10]);
    assert(ids.choices[0].token_ids.length >= 1, JSON.stringify(ids));
  } finally {
    assertEquals((await stop(p)).code, 0);
  }
});

Deno.test("64 concurrent streams: all succeed, each equals its request served alone (same seeds), GPU memory returns", async () => {
  const { p, url } = await serve(["--model", model]);
  try {
    const body = (i: number) => ({
      model: model,
      prompt: `${100 + i}+${200 + 3 * i}=`,
      max_tokens: 8,
      seed: i,
      ignore_eos: true,
      stream: true,
    });
    const run = async (i: number) => {
      const res = await fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body(i)),
      });
      assertEquals(res.status, 200);
      let text = "";
      let finish = "";
      for (const line of (await res.text()).split("\n")) {
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const c = JSON.parse(line.slice(6));
        text += c.choices[0]?.text ?? "";
        finish = c.choices[0]?.finish_reason ?? finish;
      }
      return { text, finish };
    };
    await run(0); // warm up
    const before = await gauge(url, "em_gpu_live_bytes");
    const t0 = performance.now();
    const together = await Promise.all(Array.from({ length: 64 }, (_, i) => run(i)));
    const seconds = (performance.now() - t0) / 1000;
    assert(seconds < 240, `64 streams took ${seconds} s`);
    assert(together.every((r) => r.finish === "length"), JSON.stringify(together.slice(0, 3)));
    const alone = [];
    for (const i of [0, 1, 31, 63]) alone.push(await run(i));
    assertEquals(alone, [0, 1, 31, 63].map((i) => together[i]), "the same tokens served alone");
    assertEquals(await gauge(url, "em_gpu_live_bytes"), before, "GPU memory back to its level");
    assertEquals(await gauge(url, "em_num_requests_running"), 0);
  } finally {
    assertEquals((await stop(p)).code, 0);
  }
});

Deno.test("a client that leaves mid-stream frees its slot; errors are OpenAI-shaped with their status", async () => {
  const { p, url } = await serve([
    "--model",
    model,
    "--api-key",
    "sekrit",
    "--max-batch",
    "1",
    "--max-queue",
    "0",
    "--max-body-kb",
    "1",
  ]);
  const post = (path: string, body: unknown, key: string | null = "sekrit") =>
    fetch(`${url}${path}`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(key ? { authorization: `Bearer ${key}` } : {}),
      },
      body: typeof body === "string" ? body : JSON.stringify(body),
    });
  try {
    // leaves after the first chunk of a long stream
    const controller = new AbortController();
    const res = await post("/v1/completions", {
      model,
      prompt: "1+1=",
      max_tokens: 50,
      ignore_eos: true,
      stream: true,
    });
    const reader = res.body!.getReader();
    await reader.read();
    await reader.cancel();
    controller.abort();
    let running = 1;
    for (let i = 0; i < 100 && running > 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      running = await gauge(url, "em_num_requests_running");
    }
    assertEquals(running, 0, "the slot is free again");
    const cases: [string, unknown, string | null, number, string, string | null][] = [
      [
        "/v1/completions",
        { model, prompt: "1+1=" },
        null,
        401,
        "a valid API key is required",
        null,
      ],
      [
        "/v1/completions",
        { model, prompt: "1+1=" },
        "wrong",
        401,
        "a valid API key is required",
        null,
      ],
      ["/v1/completions", "{not json", "sekrit", 400, "the body is not valid JSON", null],
      [
        "/v1/completions",
        { model, prompt: "1+1=", max_tokens: "five" },
        "sekrit",
        400,
        "max_tokens must be an integer",
        "max_tokens",
      ],
      [
        "/v1/completions",
        { model, prompt: "1+1=", temperature: 3 },
        "sekrit",
        400,
        "temperature must be a number in [0, 2]",
        "temperature",
      ],
      [
        "/v1/completions",
        { model: "nope", prompt: "1+1=" },
        "sekrit",
        404,
        "The model `nope` does not exist.",
        "model",
      ],
      [
        "/v1/completions",
        { model, prompt: "1+1=", max_tokens: 100 },
        "sekrit",
        400,
        "max_tokens 100 plus the prompt's 4 tokens exceed the model's context of 64 tokens",
        "max_tokens",
      ],
      [
        "/v1/completions",
        { model, prompt: "1".repeat(2000) },
        "sekrit",
        413,
        "more than the 1024 allowed",
        null,
      ],
      ["/v1/nothing", {}, "sekrit", 404, "no route", null],
    ];
    for (const [path, body, key, status, message, param] of cases) {
      const r = await post(path, body, key);
      assertEquals(r.status, status, `${JSON.stringify(body)}`);
      const e = await r.json();
      assertStringIncludes(e.error.message, message);
      assertEquals(e.error.param, param);
      assert(typeof e.error.type === "string" && "code" in e.error, JSON.stringify(e));
    }
    // a full queue: one slot busy with a long stream, no waiting room -> 429 with Retry-After
    const busy = await post("/v1/completions", {
      model,
      prompt: "1+1=",
      max_tokens: 55,
      ignore_eos: true,
      stream: true,
    });
    const full = await post("/v1/completions", { model, prompt: "2+2=", max_tokens: 2 });
    assertEquals(full.status, 429);
    assertEquals(full.headers.get("retry-after"), "1");
    assertEquals((await full.json()).error.code, "queue_full");
    await busy.body!.cancel();
  } finally {
    assertEquals((await stop(p)).code, 0);
  }
});

Deno.test("SIGTERM with requests in flight: they finish, the server stops listening and exits 0", async () => {
  const { p, url } = await serve(["--model", model]);
  const inFlight = Array.from({ length: 4 }, (_, i) =>
    fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model, prompt: `${i}+1=`, max_tokens: 40, ignore_eos: true }),
    }).then((r) => r.json()));
  // all four are decoding (the server has read them) before the signal
  for (let i = 0; i < 200 && await gauge(url, "em_num_requests_running") < 4; i++) {
    await new Promise((r) => setTimeout(r, 25));
  }
  p.child.kill("SIGTERM");
  const results = await Promise.all(inFlight);
  for (const r of results) assertEquals(r.choices[0].finish_reason, "length", JSON.stringify(r));
  const status = await p.status();
  assertEquals(status.code, 0, p.stderr);
  assertStringIncludes(p.stdout, "stopping: no new requests");
  await fetch(`${url}/health`).then(() => assert(false, "still listening")).catch(() => {});
});

Deno.test("teardown: the fixtures", async () => {
  await Deno.remove(dir, { recursive: true });
});
