/**
 * The HTTP side of `deno task serve`: OpenAI's endpoints as vLLM serves them
 * (/v1/models, /v1/completions, /v1/chat/completions with server-sent events,
 * /v1/load_lora_adapter, /v1/unload_lora_adapter), SGLang's
 * /update_weights_from_disk (a trainer's full fine-tuning reaching the
 * server), /health and /metrics.
 * Every error is OpenAI's shape {"error": {message, type, param, code}}; a
 * body over the limit is 413, a full queue 429 with Retry-After; a client
 * that goes away cancels its request and frees its slot. No request can
 * crash the server: anything unexpected is a 500 for that request.
 * @module
 */
import { device } from "../../engine/device.ts";
import type { CausalLM } from "../../engine/model/causal_lm.ts";
import { loadModel } from "../../engine/model/checkpoint.ts";
import { LoraAdapters } from "../../engine/model/lora.ts";
import { type ChoiceEvent, type Engine, type GenerationRequest, QueueFullError } from "./engine.ts";
import type { Metrics } from "./metrics.ts";
import {
  ApiError,
  chatLogprobs,
  completionLogprobs,
  parseChat,
  parseCompletion,
  type ParsedRequest,
} from "./openai.ts";

export interface ServerOptions {
  /** The engine, which holds the model served. */
  engine: Engine;
  metrics: Metrics;
  /** The name clients use for the base model. */
  modelName: string;
  /** Bearer token every /v1 request must carry (null: none). */
  apiKey: string | null;
  /** Largest request body in bytes. */
  maxBodyBytes: number;
  /** Loaded LoRA adapters by name, and where each came from. */
  adapters: Map<string, { adapters: LoraAdapters; path: string }>;
  log?: (line: string) => void;
}

const JSON_HEADERS = { "content-type": "application/json" };

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { ...JSON_HEADERS, ...headers } });
}

/** The request body as a JSON object, read up to the limit (413 past it). */
async function readBody(req: Request, limit: number): Promise<Record<string, unknown>> {
  const declared = Number(req.headers.get("content-length") ?? "NaN");
  if (declared > limit) {
    throw new ApiError(
      413,
      `the request body is ${declared} bytes, more than the ${limit} allowed`,
    );
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  if (req.body) {
    for await (const chunk of req.body) {
      total += chunk.length;
      if (total > limit) {
        throw new ApiError(413, `the request body is over the ${limit} bytes allowed`);
      }
      chunks.push(chunk);
    }
  }
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  let body: unknown;
  try {
    body = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new ApiError(400, `the body is not valid JSON (${(e as Error).message})`);
  }
  if (!body || typeof body !== "object" || Array.isArray(body)) {
    throw new ApiError(400, "the body must be a JSON object");
  }
  return body as Record<string, unknown>;
}

/** The request handler. */
export function createHandler(o: ServerOptions): (req: Request) => Promise<Response> {
  const created = Math.floor(Date.now() / 1000);
  const log = o.log ?? (() => {});
  const route = async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    const path = url.pathname.replace(/\/+$/, "") || "/";
    if (path === "/health") return new Response(null, { status: 200 });
    if (path === "/metrics" && req.method === "GET") {
      const s = o.engine.stats;
      return new Response(
        o.metrics.render({
          running: s.running,
          waiting: s.waiting,
          batch: s.batch,
          kvCacheBytes: o.engine.cacheBytes,
          gpuLiveBytes: device().liveBytes,
        }),
        { headers: { "content-type": "text/plain; version=0.0.4" } },
      );
    }
    if (path === "/update_weights_from_disk") return await updateWeights(req);
    if (!path.startsWith("/v1/")) throw new ApiError(404, `no route ${req.method} ${path}`);
    if (o.apiKey !== null && req.headers.get("authorization") !== `Bearer ${o.apiKey}`) {
      throw new ApiError(401, "a valid API key is required (Authorization: Bearer KEY)");
    }
    const post = (want: string) => {
      if (req.method !== "POST") throw new ApiError(405, `${want} takes POST`);
    };
    switch (path) {
      case "/v1/models":
        return json(200, {
          object: "list",
          data: [
            {
              id: o.modelName,
              object: "model",
              created,
              owned_by: "em-webgpu",
              root: o.engine.model.sourceDir,
              parent: null,
              max_model_len: o.engine.options.maxModelLen,
            },
            ...[...o.adapters].map(([id, a]) => ({
              id,
              object: "model",
              created,
              owned_by: "em-webgpu",
              root: a.path,
              parent: o.modelName,
            })),
          ],
        });
      case "/v1/completions":
      case "/v1/chat/completions": {
        post(path);
        const body = await readBody(req, o.maxBodyBytes);
        const chat = path === "/v1/chat/completions";
        const tok = o.engine.model.tokenizer!;
        const parsed = chat ? parseChat(body, tok) : parseCompletion(body, tok);
        return generateResponse(req, parsed, chat);
      }
      case "/v1/load_lora_adapter": {
        post(path);
        const body = await readBody(req, o.maxBodyBytes);
        const name = body.lora_name;
        const dir = body.lora_path;
        if (typeof name !== "string" || !name) {
          throw new ApiError(400, "lora_name must be a string", "lora_name");
        }
        if (typeof dir !== "string" || !dir) {
          throw new ApiError(400, "lora_path must be a string", "lora_path");
        }
        if (name === o.modelName || o.adapters.has(name)) {
          throw new ApiError(400, `the adapter ${name} is already loaded`, "lora_name");
        }
        let adapters: LoraAdapters;
        try {
          adapters = await LoraAdapters.load(dir, o.engine.model.config);
        } catch (e) {
          throw new ApiError(400, `cannot load ${dir}: ${(e as Error).message}`, "lora_path");
        }
        o.adapters.set(name, { adapters, path: dir });
        log(`loaded LoRA adapter ${name} from ${dir}`);
        return new Response(`Success: LoRA adapter '${name}' added successfully.`, { status: 200 });
      }
      case "/v1/unload_lora_adapter": {
        post(path);
        const body = await readBody(req, o.maxBodyBytes);
        const name = body.lora_name;
        const entry = typeof name === "string" ? o.adapters.get(name) : undefined;
        if (!entry) {
          throw new ApiError(
            404,
            `no adapter named ${JSON.stringify(name)} is loaded`,
            "lora_name",
          );
        }
        o.adapters.delete(name as string);
        // running requests keep it until they end; it is freed after
        const free = () =>
          o.engine.uses(entry.adapters) ? setTimeout(free, 200) : entry.adapters.dispose();
        free();
        log(`unloaded LoRA adapter ${name}`);
        return new Response(`Success: LoRA adapter '${name}' removed successfully.`, {
          status: 200,
        });
      }
      default:
        throw new ApiError(404, `no route ${req.method} ${path}`);
    }
  };

  /**
   * SGLang's POST /update_weights_from_disk {"model_path"}: the checkpoint
   * there (same architecture) replaces the served weights once the running
   * requests end; waiting ones then run on it. Answers {success, message}.
   */
  const updateWeights = async (req: Request): Promise<Response> => {
    if (o.apiKey !== null && req.headers.get("authorization") !== `Bearer ${o.apiKey}`) {
      throw new ApiError(401, "a valid API key is required (Authorization: Bearer KEY)");
    }
    if (req.method !== "POST") throw new ApiError(405, "/update_weights_from_disk takes POST");
    const body = await readBody(req, o.maxBodyBytes);
    const dir = body.model_path;
    if (typeof dir !== "string" || !dir) {
      throw new ApiError(400, "model_path must be a string", "model_path");
    }
    const fail = (message: string) => json(400, { success: false, message });
    const current = o.engine.model;
    let next: CausalLM;
    try {
      next = await loadModel(dir, { checkFinite: false, warn: () => {} });
    } catch (e) {
      return fail(`cannot load ${dir}: ${(e as Error).message}`);
    }
    const shapes = (m: CausalLM) => JSON.stringify(m.parameters.map((p) => [p.name, p.shape]));
    if (shapes(next) !== shapes(current) || next.adapters) {
      next.dispose();
      return fail(`${dir} is not a full checkpoint of the served architecture`);
    }
    const t0 = performance.now();
    (await o.engine.replaceModel(next)).dispose();
    o.metrics.weightUpdates++;
    const message = `weights from ${dir} in ${((performance.now() - t0) / 1000).toFixed(2)} s`;
    log(`updated ${message}`);
    return json(200, { success: true, message: `Succeeded to update model ${message}` });
  };

  /** Submits a parsed completion request; answers with JSON or a stream of events. */
  const generateResponse = async (req: Request, p: ParsedRequest, chat: boolean) => {
    const adapter = p.model === o.modelName ? null : o.adapters.get(p.model);
    if (adapter === undefined) {
      throw new ApiError(
        404,
        `The model \`${p.model}\` does not exist.`,
        "model",
        "model_not_found",
      );
    }
    const L = o.engine.options.maxModelLen;
    const vocab = o.engine.model.config.vocabSize;
    const requests: GenerationRequest[] = p.prompts.map((ids, i) => {
      const name = p.prompts.length > 1 ? `prompt[${i}]` : chat ? "messages" : "prompt";
      const bad = ids.find((t) => t >= vocab);
      if (bad !== undefined) {
        throw new ApiError(
          400,
          `token id ${bad} is outside the vocabulary (0..${vocab - 1})`,
          name,
        );
      }
      if (ids.length >= L) {
        throw new ApiError(
          400,
          `the prompt is ${ids.length} tokens, and the model's context is ${L}`,
          name,
        );
      }
      const maxTokens = p.maxTokens ?? L - ids.length;
      if (ids.length + maxTokens > L) {
        throw new ApiError(
          400,
          `max_tokens ${maxTokens} plus the prompt's ${ids.length} tokens exceed the model's context of ${L} tokens`,
          chat ? "max_completion_tokens" : "max_tokens",
        );
      }
      return {
        promptIds: ids,
        n: p.n,
        params: { ...p.params, maxTokens },
        adapter: adapter ? { name: p.model, adapters: adapter.adapters } : null,
      };
    });
    const handles: ReturnType<Engine["submit"]>[] = [];
    try {
      for (const r of requests) handles.push(o.engine.submit(r));
    } catch (e) {
      handles.forEach((h) => h.cancel());
      if (e instanceof QueueFullError) {
        throw new ApiError(429, e.message, null, "rate_limit_error", "queue_full");
      }
      throw e;
    }
    const choices = handles.flatMap((h) => h.choices);
    const cancel = () => handles.forEach((h) => h.cancel());
    const promptTokens = p.prompts.reduce((n, ids) => n + ids.length, 0);
    o.metrics.promptTokens += promptTokens;
    o.metrics.byModel.set(p.model, (o.metrics.byModel.get(p.model) ?? 0) + 1);
    const id = `${chat ? "chatcmpl" : "cmpl"}-${crypto.randomUUID().replace(/-/g, "")}`;
    const tok = o.engine.model.tokenizer!;
    const entropy = p.params.entropy;
    const logprobsOf = (tokens: ChoiceEvent["tokens"]) =>
      p.params.logprobs === null && !entropy
        ? null
        : chat
        ? chatLogprobs(tokens, tok, entropy)
        : completionLogprobs(tokens, tok, entropy);
    const promptOf = (i: number) => p.prompts[Math.floor(i / p.n)];
    if (!p.stream) {
      req.signal.addEventListener("abort", cancel);
      const results = await Promise.all(choices.map(async (events) => {
        let text = "";
        const tokens: ChoiceEvent["tokens"] = [];
        let finish: ChoiceEvent["finishReason"] | null = null;
        for await (const e of events) {
          text += e.text;
          tokens.push(...e.tokens);
          finish = e.finishReason ?? finish;
        }
        return { text, tokens, finish };
      }));
      const completionTokens = results.reduce((n, r) => n + r.tokens.length, 0);
      o.metrics.generationTokens += completionTokens;
      return json(200, {
        id,
        object: chat ? "chat.completion" : "text_completion",
        created: Math.floor(Date.now() / 1000),
        model: p.model,
        choices: results.map((r, index) => ({
          index,
          ...(chat ? { message: { role: "assistant", content: r.text } } : { text: r.text }),
          logprobs: logprobsOf(r.tokens),
          finish_reason: r.finish,
          ...(p.returnTokenIds
            ? { prompt_token_ids: promptOf(index), token_ids: r.tokens.map((t) => t.id) }
            : {}),
        })),
        usage: {
          prompt_tokens: promptTokens,
          completion_tokens: completionTokens,
          total_tokens: promptTokens + completionTokens,
        },
      });
    }
    // streaming: server-sent events, one chunk per piece of a choice, then [DONE]
    const enc = new TextEncoder();
    let completionTokens = 0;
    const stream = new ReadableStream<Uint8Array>({
      start: async (controller) => {
        const send = (obj: unknown) => {
          try {
            controller.enqueue(enc.encode(`data: ${JSON.stringify(obj)}\n\n`));
          } catch { /* the client is gone */ }
        };
        const chunk = (choice: Record<string, unknown>) => ({
          id,
          object: chat ? "chat.completion.chunk" : "text_completion",
          created: Math.floor(Date.now() / 1000),
          model: p.model,
          choices: [choice],
        });
        try {
          await Promise.all(choices.map(async (events, index) => {
            if (chat) {
              send(
                chunk({
                  index,
                  delta: { role: "assistant", content: "" },
                  logprobs: null,
                  finish_reason: null,
                }),
              );
            }
            for await (const e of events) {
              completionTokens += e.tokens.length;
              if (e.text === "" && e.tokens.length === 0 && !e.finishReason) continue;
              const ids = p.returnTokenIds ? { token_ids: e.tokens.map((t) => t.id) } : {};
              send(chunk({
                index,
                ...(chat
                  ? { delta: e.text || e.finishReason ? { content: e.text } : {} }
                  : { text: e.text }),
                logprobs: e.tokens.length ? logprobsOf(e.tokens) : null,
                finish_reason: e.finishReason ?? null,
                ...ids,
                ...(p.returnTokenIds && e.finishReason
                  ? { prompt_token_ids: promptOf(index) }
                  : {}),
              }));
            }
          }));
          if (p.includeUsage) {
            send({
              id,
              object: chat ? "chat.completion.chunk" : "text_completion",
              created: Math.floor(Date.now() / 1000),
              model: p.model,
              choices: [],
              usage: {
                prompt_tokens: promptTokens,
                completion_tokens: completionTokens,
                total_tokens: promptTokens + completionTokens,
              },
            });
          }
        } catch (e) {
          send(new ApiError(500, (e as Error).message).body());
        }
        o.metrics.generationTokens += completionTokens;
        try {
          controller.enqueue(enc.encode("data: [DONE]\n\n"));
          controller.close();
        } catch { /* the client is gone */ }
      },
      cancel,
    });
    return new Response(stream, {
      headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
    });
  };

  return async (req: Request) => {
    let res: Response;
    try {
      res = await route(req);
    } catch (e) {
      const err = e instanceof ApiError
        ? e
        : new ApiError(500, `internal error: ${(e as Error)?.message ?? String(e)}`);
      if (err.status === 500) log(`error: ${err.message}`);
      res = json(err.status, err.body(), err.status === 429 ? { "retry-after": "1" } : {});
    }
    o.metrics.countRequest(res.status);
    return res;
  };
}
