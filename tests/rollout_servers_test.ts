/**
 * Rollouts from inference servers: `deno task train --rollout-server` against
 * `deno task serve` children on loopback. The servers' log-probs match the
 * trainer's (and do not for a server with perturbed weights); their samples
 * follow the model's distribution at the run's temperature; each step's
 * adapter (or full weights) reaches the servers and the next rollouts use
 * it; two servers share the load, one killed mid-run leaves the run to the
 * other, both killed stop it with its checkpoint intact. Misbehaving servers
 * (in-process HTTP servers answering wrongly) are errors naming them.
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import { readSafetensors, toFloat32, writeSafetensors } from "../engine/safetensors.ts";
import { loadModel } from "../engine/model/checkpoint.ts";
import { noGrad } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { localSampler, type SampleRequest } from "../infer/sampler.ts";
import { DEMO_EOS, encodeDemo, heldOutProblems } from "../demo/task.ts";
import { RolloutError, RolloutServers } from "../train/rollout_servers.ts";
import { readRunState } from "../train/run_state.ts";
import { CliProcess, runCli } from "./_cli.ts";

const SERVE = "../infer/serve/cli.ts";
const TRAIN = "../train/cli.ts";
const DEMO = new URL("../demo/model", import.meta.url).pathname;

/** A server as a child process on a free port. */
async function serve(args: string[] = []): Promise<{ p: CliProcess; url: string }> {
  const p = new CliProcess(SERVE, ["--port", "0", ...args]);
  await p.waitFor(/serving .* on http:\/\/127\.0\.0\.1:\d+\/v1/, 300);
  const port = /127\.0\.0\.1:(\d+)\/v1/.exec(p.stdout)![1];
  return { p, url: `http://127.0.0.1:${port}` };
}

async function stop(s: { p: CliProcess }): Promise<void> {
  try {
    s.p.child.kill("SIGTERM");
  } catch { /* already gone */ }
  await s.p.status();
}

/** `em_model_requests_total` of a server's /metrics, by model. */
async function requestsByModel(url: string): Promise<Record<string, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^em_model_requests_total\{model="([^"]+)"\} (\d+)$/gm)) {
    out[m[1]] = Number(m[2]);
  }
  return out;
}

async function metricsOf(out: string): Promise<Record<string, number>[]> {
  return (await Deno.readTextFile(`${out}/metrics.jsonl`)).trim().split("\n")
    .map((l) => JSON.parse(l)).filter((m) => !m.eval);
}

/** Demo problems as a --data file (no before/after table to wait for). */
const DATA = await Deno.makeTempFile({ prefix: "rollout_data_", suffix: ".jsonl" });
await Deno.writeTextFile(
  DATA,
  heldOutProblems(32).map((p) => JSON.stringify({ prompt: p.prompt })).join("\n") + "\n",
);

/** A small EM-RL run of the demo model: 4 prompts x 4 rollouts a step. */
const SMALL = [
  ...["--method", "em-rl", "--model", DEMO, "--data", DATA, "--max-new-tokens", "5"],
  ...["--batch-size", "4", "--n-samples", "4", "--micro-batch", "16"],
];

Deno.test("rollouts from our own server: the log-probs match the trainer's, every step's adapter reaches the server and the next rollouts use it; full weights through /update_weights_from_disk", async () => {
  const dir = await Deno.makeTempDir({ prefix: "rollout_test_" });
  const server = await serve();
  try {
    const lora = await runCli(TRAIN, [
      ...SMALL,
      "--steps",
      "3",
      "--lora-rank",
      "4",
      "--rollout-server",
      `${server.url}/v1`,
      "--out",
      `${dir}/lora`,
    ]);
    assertEquals(lora.code, 0, lora.stderr);
    const steps = await metricsOf(`${dir}/lora`);
    assertEquals(steps.length, 3);
    for (const m of steps) {
      assert(m.mismatchAbsLogp < 1e-4 && m.mismatchKl < 1e-6, JSON.stringify(m));
      assert(m.syncSeconds > 0 && m.rolloutSeconds > 0, JSON.stringify(m));
    }
    // versions 0..3 were loaded; step k's rollouts asked for version k-1 (4 prompts, one request each)
    assertStringIncludes(lora.stdout, "synced step 0 to 1/1 rollout servers");
    const tag = /loaded LoRA adapter (em-[0-9a-f]+)-v0/.exec(server.p.stdout)?.[1];
    assert(tag, server.p.stdout);
    const byModel = await requestsByModel(server.url);
    for (const v of [0, 1, 2]) assertEquals(byModel[`${tag}-v${v}`], 4, JSON.stringify(byModel));
    assertEquals(byModel["demo"], undefined, "no rollout used the bare base");
    // only the last version stays loaded
    const models = (await (await fetch(`${server.url}/v1/models`)).json()).data
      .map((m: { id: string }) => m.id);
    assertEquals(models, ["demo", `${tag}-v3`]);
    // its files are what the run's last step trained
    const saved = await readSafetensors(`${dir}/lora/sync/${tag}-v3/adapter_model.safetensors`);
    const ckpt = await readSafetensors(`${dir}/lora/checkpoint/adapter_model.safetensors`);
    assertEquals(saved.tensors.size, ckpt.tensors.size);
    for (const [name, t] of ckpt.tensors) assertEquals(saved.tensors.get(name)!.data, t.data);

    // full fine-tuning at a large learning rate: without the reload, step 2's rollouts would differ
    const full = await runCli(TRAIN, [
      ...SMALL,
      "--steps",
      "2",
      "--lr",
      "3e-3",
      "--rollout-server",
      server.url,
      "--out",
      `${dir}/full`,
    ]);
    assertEquals(full.code, 0, full.stderr);
    const fullSteps = await metricsOf(`${dir}/full`);
    for (const m of fullSteps) assert(m.mismatchAbsLogp < 1e-4, JSON.stringify(m));
    assertStringIncludes(server.p.stdout, "updated weights from");
    const updates = /^em_weight_updates_total (\d+)$/m
      .exec(await (await fetch(`${server.url}/metrics`)).text())?.[1];
    assertEquals(updates, "3", "before step 1 and after each step");
    // --async-rollouts: step 2 was sampled from step 0's weights while step 1 updated
    const ahead = await runCli(TRAIN, [
      ...SMALL,
      "--steps",
      "2",
      "--lr",
      "3e-3",
      "--rollout-server",
      server.url,
      "--async-rollouts",
      "--tis-cap",
      "2",
      "--out",
      `${dir}/async`,
    ]);
    assertEquals(ahead.code, 0, ahead.stderr);
    const [first, second] = await metricsOf(`${dir}/async`);
    assert(first.mismatchAbsLogp < 1e-4, JSON.stringify(first));
    assert(second.mismatchAbsLogp > 1e-3, `one step off-policy: ${JSON.stringify(second)}`);
    assert(second.tisCapped >= 0 && second.tisCapped <= 1);
  } finally {
    await stop(server);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("rollouts from a server whose weights differ: the mismatch metrics see it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "rollout_test_" });
  const model = `${dir}/perturbed`;
  await Deno.mkdir(model);
  for await (const e of Deno.readDir(DEMO)) {
    if (e.isFile) await Deno.copyFile(`${DEMO}/${e.name}`, `${model}/${e.name}`);
  }
  const { tensors, metadata } = await readSafetensors(`${model}/model.safetensors`);
  const norm = tensors.get("model.norm.weight")!;
  const scaled = toFloat32(norm).map((x) => 1.2 * x);
  tensors.set("model.norm.weight", { ...norm, data: new Uint8Array(scaled.buffer) });
  await writeSafetensors(`${model}/model.safetensors`, tensors, metadata);
  const server = await serve(["--model", model, "--served-model-name", "demo"]);
  try {
    const r = await runCli(TRAIN, [
      ...SMALL,
      "--steps",
      "1",
      "--lora-rank",
      "4",
      "--rollout-server",
      server.url,
      "--out",
      `${dir}/run`,
    ]);
    assertEquals(r.code, 0, r.stderr);
    const [m] = await metricsOf(`${dir}/run`);
    assert(m.mismatchAbsLogp > 0.01 && m.mismatchKl > 1e-4, JSON.stringify(m));
  } finally {
    await stop(server);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a server samples from the model's distribution at the requested temperature, as the trainer does in process", async () => {
  // Exact token agreement is not expected: a request carries one seed for its n choices (vLLM
  // draws them from one generator, ours seeds choice i with seed + i), while generate() draws
  // every row of a batch from one stream. So the first token's frequencies are compared with
  // the model's probabilities softmax(z / T), for the server and for the in-process sampler.
  const model = await loadModel(DEMO);
  const server = await serve();
  try {
    const T = 0.7;
    // the held-out prompt whose first token is least certain
    const prompts = heldOutProblems(40).map((p) => encodeDemo(p.prompt));
    const probs = await Promise.all(prompts.map(async (ids) => {
      const logits = noGrad(() =>
        model.forward(Tensor.from(ids, [1, ids.length], { dtype: "i32" }))
      );
      const all = new Float32Array(await logits.toArray()); // (1, L, V)
      logits.dispose();
      const V = model.config.vocabSize;
      const z = Array.from(all.subarray(all.length - V), (x) => x / T);
      const max = Math.max(...z);
      const e = z.map((x) => Math.exp(x - max));
      const sum = e.reduce((a, b) => a + b, 0);
      return e.map((x) => x / sum);
    }));
    const entropyOf = (p: number[]) => -p.reduce((s, x) => s + (x > 0 ? x * Math.log(x) : 0), 0);
    const pick = probs.map(entropyOf).reduce((b, h, i, hs) => (h > hs[b] ? i : b), 0);
    const p = probs[pick];
    const N = 512;
    const request: SampleRequest = {
      prompts: [prompts[pick]],
      n: 64,
      maxNewTokens: 1,
      temperature: T,
      topP: 1,
      seed: 7,
      eosTokenIds: [DEMO_EOS],
      padTokenId: DEMO_EOS,
    };
    const servers = await RolloutServers.connect([server.url], p.length, {
      timeoutSeconds: 60,
      retries: 0,
      syncDir: await Deno.makeTempDir(),
    });
    const remote: number[] = [];
    for (let i = 0; i < N / 64; i++) {
      const r = await servers.sampler({ ...request, seed: 1000 * i });
      remote.push(...r.tokens.map((t) => t[0]));
    }
    const local = (await localSampler(model)({ ...request, n: N })).tokens.map((t) => t[0]);
    const tv = (xs: number[]) => {
      const f = new Array(p.length).fill(0);
      xs.forEach((x) => f[x] += 1 / xs.length);
      return 0.5 * f.reduce((s, x, i) => s + Math.abs(x - p[i]), 0);
    };
    // sampling noise at N = 512 over a few likely tokens is about 0.03
    assert(entropyOf(p) > 0.3, `the prompt's first token is nearly certain: ${p}`);
    assert(tv(remote) < 0.08, `server vs model: TV ${tv(remote)}`);
    assert(tv(local) < 0.08, `in process vs model: TV ${tv(local)}`);
  } finally {
    model.dispose();
    await stop(server);
  }
});

Deno.test("two servers share the load; one killed mid-run leaves the run to the other; both killed stop it with its checkpoint intact", async () => {
  const dir = await Deno.makeTempDir({ prefix: "rollout_test_" });
  const [a, b] = [await serve(), await serve()];
  const out = `${dir}/run`;
  const common = ["--rollout-retries", "2", "--rollout-timeout", "60", "--save-every", "1"];
  try {
    const run = new CliProcess(TRAIN, [
      ...SMALL,
      "--steps",
      "5",
      "--lora-rank",
      "4",
      "--rollout-server",
      `${a.url},${b.url}`,
      ...common,
      "--out",
      out,
    ]);
    await run.waitFor(/step 2\/5/, 600);
    const [servedA, servedB] = await Promise.all([a.url, b.url].map(requestsByModel));
    const sum = (x: Record<string, number>) => Object.values(x).reduce((s, n) => s + n, 0);
    // 4 requests a step, least in-flight first: each server takes half
    const [na, nb] = [sum(servedA), sum(servedB)];
    assert(na >= 4 && nb >= 4 && Math.abs(na - nb) <= 2, `${na} and ${nb} requests`);
    a.p.child.kill("SIGKILL");
    const status = await run.status();
    assertEquals(status.code, 0, run.stderr);
    assertStringIncludes(run.stdout, `rollout server ${a.url} failed`);
    assertEquals((await metricsOf(out)).length, 5);
    assert(sum(await requestsByModel(b.url)) >= 4 + 4 * 2, "the other server took the rest");

    // continue the run on the one left, then lose it too
    const resumed = new CliProcess(TRAIN, [
      "--resume",
      "--steps",
      "9",
      "--out",
      out,
      "--rollout-server",
      b.url,
      ...common,
    ]);
    await resumed.waitFor(/step 7\/9/, 600);
    b.p.child.kill("SIGKILL");
    const lost = await resumed.status();
    assertEquals(lost.code, 1);
    assertStringIncludes(resumed.stderr, "no rollout server");
    assertStringIncludes(resumed.stderr, b.url);
    assertStringIncludes(resumed.stderr, "is intact: continue with --resume");
    const state = await readRunState(`${out}/checkpoint`);
    assert(state.step >= 7 && state.step < 9, `checkpoint at step ${state.step}`);
    const lines = await metricsOf(out);
    assertEquals(lines.at(-1)!.step >= state.step, true);
  } finally {
    await Promise.all([stop(a), stop(b)]);
    await Deno.remove(dir, { recursive: true });
  }
});

/** An in-process HTTP server answering /v1/models as `owner` and completions with `complete`. */
function fakeServer(
  owner: string,
  complete: (body: Record<string, unknown>) => Response,
): { url: string; close: () => Promise<void>; requests: number } {
  const state = { requests: 0 };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/v1/models") {
      return Response.json({ object: "list", data: [{ id: "demo", owned_by: owner }] });
    }
    state.requests++;
    return complete(await req.json());
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    close: () => server.shutdown(),
    get requests() {
      return state.requests;
    },
  };
}

/** A well-formed completion of `n` choices of `ids`. */
function completion(n: number, ids: unknown, logprobs: unknown = null): Response {
  return Response.json({
    choices: Array.from({ length: n }, (_, index) => ({
      index,
      text: "",
      token_ids: ids,
      logprobs: {
        token_logprobs: logprobs ??
          (Array.isArray(ids) ? ids.map(() => -0.5) : []),
      },
      finish_reason: "stop",
    })),
  });
}

const REQUEST: SampleRequest = {
  prompts: [[1, 2, 3], [4, 5]],
  n: 2,
  maxNewTokens: 4,
  temperature: 1,
  topP: 1,
  seed: 3,
  eosTokenIds: [14],
  padTokenId: 14,
};

Deno.test("malformed completions are errors naming the server; failures are retried on the others; refusals are not", async () => {
  const options = { timeoutSeconds: 5, retries: 2, syncDir: "/nonexistent" };
  const cases: [string, (b: Record<string, unknown>) => Response, string][] = [
    ["outside", (b) => completion(b.n as number, [3, 99]), "token id 99 is outside the vocabulary"],
    ["missing", (b) => completion(b.n as number, undefined), "has no token_ids"],
    ["fewer", () => completion(1, [3, 14]), "1 choices where n = 2"],
    ["logprobs", (b) => completion(b.n as number, [3, 14], [-1]), "logprobs.token_logprobs"],
    ["long", (b) => completion(b.n as number, [1, 2, 3, 4, 5]), "more than max_tokens 4"],
    ["json", () => new Response("<html>"), "not JSON"],
  ];
  for (const [name, answer, message] of cases) {
    const fake = fakeServer("vllm", answer);
    try {
      const servers = await RolloutServers.connect([fake.url], 15, options);
      const e = await assertRejects(() => servers.sampler(REQUEST), RolloutError);
      assertStringIncludes(e.message, fake.url, name);
      assertStringIncludes(e.message, message, name);
    } finally {
      await fake.close();
    }
  }
  // one server failing (500) and one answering: every request is answered, the failure retried
  const broken = fakeServer("vllm", () => new Response("boom", { status: 500 }));
  const good = fakeServer("vllm", (b) => completion(b.n as number, [7, 14]));
  const refusing = fakeServer("vllm", () => Response.json({ error: "bad" }, { status: 400 }));
  try {
    const logs: string[] = [];
    const servers = await RolloutServers.connect([broken.url, good.url], 15, {
      ...options,
      log: (l) => logs.push(l),
    });
    const r = await servers.sampler(REQUEST);
    assertEquals(r.tokens, [[7, 14], [7, 14], [7, 14], [7, 14]]);
    assertEquals(r.logprobs, [[-0.5, -0.5], [-0.5, -0.5], [-0.5, -0.5], [-0.5, -0.5]]);
    assert(
      broken.requests >= 1 && logs.some((l) => l.includes(`${broken.url} failed`)),
      logs.join(),
    );
    // only failing servers: the error names each
    const none = await RolloutServers.connect([broken.url], 15, { ...options, retries: 1 });
    const e = await assertRejects(() => none.sampler(REQUEST), RolloutError);
    assertStringIncludes(e.message, "no rollout server answered (2 attempts)");
    assertStringIncludes(e.message, `${broken.url}: 500 boom`);
    // a refusal (4xx) is the request's fault: not retried elsewhere
    const refused = await RolloutServers.connect([refusing.url, good.url], 15, options);
    const before = good.requests;
    const err = await assertRejects(() => refused.sampler(REQUEST), RolloutError);
    assertStringIncludes(err.message, `rollout server ${refusing.url} refused`);
    assertEquals(good.requests - before <= 2, true); // only the other prompt's own request
    // servers serving different models, and one not answering at all
    const other = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      () => Response.json({ data: [{ id: "qwen", owned_by: "vllm" }] }),
    );
    try {
      const mixed = await assertRejects(
        () =>
          RolloutServers.connect(
            [good.url, `http://127.0.0.1:${other.addr.port}/v1/`],
            15,
            options,
          ),
        RolloutError,
      );
      assertStringIncludes(mixed.message, "serve different models");
    } finally {
      await other.shutdown();
    }
    const gone = await assertRejects(
      () => RolloutServers.connect(["http://127.0.0.1:9"], 15, options),
      RolloutError,
    );
    assertStringIncludes(gone.message, "http://127.0.0.1:9: cannot reach it");
  } finally {
    await Promise.all([broken.close(), good.close(), refusing.close()]);
  }
});

Deno.test("rollout-server flags: each misuse is refused before step 1, naming the flag", async () => {
  const vllm = fakeServer("vllm", (b) => completion(b.n as number, [7, 14]));
  try {
    const cases: [string[], string][] = [
      [["--tis-cap", "2"], "--tis-cap is about rollouts from servers: add --rollout-server URL"],
      [["--async-rollouts"], "--async-rollouts is about rollouts from servers"],
      [
        ["--method", "sft", "--data", "x.jsonl", "--rollout-server", vllm.url],
        "--method sft samples nothing",
      ],
      [
        ["--rollout-server", vllm.url, "--tis-cap", "2"],
        "--tis-cap weights EM-RL's policy gradient",
      ],
      [["--rollout-server", vllm.url, "--rollout-retries", "two"], "--rollout-retries"],
      // vLLM has no route to reload full weights: full fine-tuning is refused before training
      [
        ["--method", "em-rl", "--steps", "1", "--rollout-server", vllm.url],
        "vLLM cannot reload full weights",
      ],
    ];
    for (const [args, message] of cases) {
      const dir = await Deno.makeTempDir();
      const r = await runCli(TRAIN, [...args, "--out", `${dir}/run`]);
      assert(r.code !== 0, args.join(" "));
      assertStringIncludes(r.stderr, message, args.join(" "));
      await Deno.remove(dir, { recursive: true });
    }
    assertEquals(vllm.requests, 0, "nothing was sampled");
  } finally {
    await vllm.close();
  }
});
