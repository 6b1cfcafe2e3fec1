/**
 * OpenAI's API as vLLM implements it: request bodies of /v1/completions and
 * /v1/chat/completions checked field by field (a wrong field is a 400 naming
 * it, in OpenAI's error shape), turned into engine requests, and the
 * responses and stream chunks built from what the engine produced.
 * Extensions in the body (what the `openai` client sends in `extra_body`):
 * `em_inf` (true or {lr, steps, kl, threshold}), `adaptive_temperature`
 * ({alpha, delta}), `entropy` (the entropy of each token's distribution
 * beside the logprobs), `return_token_ids`, `stop_token_ids`, `ignore_eos`,
 * `top_k`, `chat_template_kwargs` (vLLM's names where vLLM has them).
 * @module
 */
import type { QwenTokenizer } from "../../engine/model/tokenizer.ts";
import { EM_INF_DEFAULTS, type EmInfOptions } from "../em_inf.ts";
import type { ChoiceEvent, SamplingParams, TokenInfo } from "./engine.ts";

/** An error with its HTTP status and OpenAI's shape. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly type = status === 404
      ? "not_found_error"
      : status === 401
      ? "authentication_error"
      : status === 429
      ? "rate_limit_error"
      : status >= 500
      ? "server_error"
      : "invalid_request_error",
    readonly code: string | null = null,
  ) {
    super(message);
  }

  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return {
      error: { message: this.message, type: this.type, param: this.param, code: this.code },
    };
  }
}

type Json = Record<string, unknown>;

const bad = (param: string, what: string) => new ApiError(400, `${param} ${what}`, param);

function num(body: Json, name: string, check: (v: number) => boolean, what: string) {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v) || !check(v)) throw bad(name, `must be ${what}`);
  return v;
}
const int = (body: Json, name: string, min: number, max = Infinity) =>
  num(
    body,
    name,
    (v) => Number.isInteger(v) && v >= min && v <= max,
    `an integer in [${min}, ${max}]`,
  );

function bool(body: Json, name: string): boolean | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "boolean") throw bad(name, "must be a boolean");
  return v;
}

/** What a parsed request needs besides its prompt(s). */
export interface ParsedRequest {
  model: string;
  /** Token ids of each prompt (completions may send several). */
  prompts: number[][];
  n: number;
  /** max_tokens as asked (null: up to the context). */
  maxTokens: number | null;
  params: Omit<SamplingParams, "maxTokens">;
  stream: boolean;
  includeUsage: boolean;
  returnTokenIds: boolean;
}

/** Sampling fields shared by both endpoints. */
function sampling(body: Json, logprobs: number | null): Omit<SamplingParams, "maxTokens"> {
  const temperature = num(body, "temperature", (v) => v >= 0 && v <= 2, "a number in [0, 2]") ?? 1;
  const topP = num(body, "top_p", (v) => v > 0 && v <= 1, "a number in (0, 1]") ?? 1;
  const topK =
    num(body, "top_k", (v) => Number.isInteger(v) && v >= -1, "an integer >= -1 (-1 or 0: off)") ??
      0;
  for (const f of ["presence_penalty", "frequency_penalty", "repetition_penalty"]) {
    const v = num(body, f, () => true, "a number");
    if (v !== undefined && v !== (f === "repetition_penalty" ? 1 : 0)) {
      throw new ApiError(400, `${f} is not supported by this server`, f);
    }
  }
  if (body.logit_bias && Object.keys(body.logit_bias as Json).length) {
    throw new ApiError(400, "logit_bias is not supported by this server", "logit_bias");
  }
  let stop: string[] = [];
  if (typeof body.stop === "string") stop = [body.stop];
  else if (Array.isArray(body.stop)) {
    if (!body.stop.every((s) => typeof s === "string" && s.length > 0)) {
      throw bad("stop", "must be a string or a list of non-empty strings");
    }
    stop = body.stop as string[];
  } else if (body.stop !== undefined && body.stop !== null) {
    throw bad("stop", "must be a string or a list of strings");
  }
  const ids = body.stop_token_ids;
  if (ids !== undefined && (!Array.isArray(ids) || !ids.every(Number.isInteger))) {
    throw bad("stop_token_ids", "must be a list of token ids");
  }
  const seed = num(body, "seed", Number.isInteger, "an integer");
  return {
    temperature,
    topP,
    topK: topK < 0 ? 0 : topK,
    greedy: temperature === 0,
    stop,
    stopTokenIds: (ids as number[] | undefined) ?? [],
    ignoreEos: bool(body, "ignore_eos") ?? false,
    seed: seed ?? Math.floor(Math.random() * 2 ** 31),
    logprobs,
    entropy: bool(body, "entropy") ?? false,
    emInf: emInf(body.em_inf),
    adaptive: adaptive(body.adaptive_temperature),
  };
}

function emInf(v: unknown): EmInfOptions | null {
  if (v === undefined || v === null || v === false) return null;
  if (v === true) return { ...EM_INF_DEFAULTS };
  if (typeof v !== "object" || Array.isArray(v)) {
    throw bad("em_inf", "must be true or an object {lr, steps, kl, threshold}");
  }
  const o = v as Json;
  const known = ["lr", "steps", "kl", "threshold"];
  const extra = Object.keys(o).find((k) => !known.includes(k));
  if (extra) throw bad(`em_inf.${extra}`, `is not one of ${known.join(", ")}`);
  const field = (k: string, check: (x: number) => boolean, what: string, d: number) => {
    const x = o[k];
    if (x === undefined) return d;
    if (typeof x !== "number" || !check(x)) throw bad(`em_inf.${k}`, `must be ${what}`);
    return x;
  };
  return {
    lr: field("lr", (x) => x > 0, "> 0", EM_INF_DEFAULTS.lr),
    steps: field(
      "steps",
      (x) => Number.isInteger(x) && x >= 1 && x <= 100,
      "an integer in [1, 100]",
      EM_INF_DEFAULTS.steps,
    ),
    klWeight: field("kl", (x) => x >= 0, ">= 0", EM_INF_DEFAULTS.klWeight),
    threshold: field("threshold", (x) => x >= 0, ">= 0", EM_INF_DEFAULTS.threshold),
  };
}

function adaptive(v: unknown) {
  if (v === undefined || v === null || v === false) return null;
  if (v === true) return { alpha: 0.5, delta: 0.1 };
  if (typeof v !== "object" || Array.isArray(v)) {
    throw bad("adaptive_temperature", "must be true or an object {alpha, delta}");
  }
  const o = v as Json;
  const alpha = o.alpha ?? 0.5;
  const delta = o.delta ?? 0.1;
  if (typeof alpha !== "number" || !(alpha > 0 && alpha <= 1)) {
    throw bad("adaptive_temperature.alpha", "must be in (0, 1]");
  }
  if (typeof delta !== "number" || !(delta >= 0)) {
    throw bad("adaptive_temperature.delta", "must be >= 0");
  }
  return { alpha, delta };
}

function common(body: Json) {
  if (typeof body.model !== "string" || !body.model) throw bad("model", "must be a string");
  const n = int(body, "n", 1, 128) ?? 1;
  const bestOf = int(body, "best_of", 1, 128);
  if (bestOf !== undefined && bestOf !== n) {
    throw new ApiError(400, "best_of other than n is not supported by this server", "best_of");
  }
  const stream = bool(body, "stream") ?? false;
  const so = body.stream_options;
  if (so !== undefined && so !== null && (typeof so !== "object" || Array.isArray(so))) {
    throw bad("stream_options", "must be an object");
  }
  const includeUsage = (so as Json | null)?.include_usage === true;
  if (includeUsage && !stream) {
    throw new ApiError(400, "stream_options is only allowed with stream: true", "stream_options");
  }
  return {
    model: body.model,
    n,
    stream,
    includeUsage,
    returnTokenIds: bool(body, "return_token_ids") ?? false,
  };
}

/** A /v1/completions body. */
export function parseCompletion(body: Json, tok: QwenTokenizer): ParsedRequest {
  const c = common(body);
  if (body.echo === true) throw new ApiError(400, "echo is not supported by this server", "echo");
  if (body.suffix) throw new ApiError(400, "suffix is not supported by this server", "suffix");
  const p = body.prompt;
  const list: unknown[] =
    typeof p === "string" || (Array.isArray(p) && p.every((x) => typeof x === "number"))
      ? [p]
      : Array.isArray(p)
      ? p
      : [];
  if (list.length === 0) {
    throw bad("prompt", "must be a string, a list of token ids, or a list of either");
  }
  const prompts = list.map((x, i) => {
    if (typeof x === "string") return tok.encode(x);
    if (Array.isArray(x) && x.length && x.every((t) => Number.isInteger(t) && t >= 0)) {
      return x as number[];
    }
    throw bad(
      list.length > 1 ? `prompt[${i}]` : "prompt",
      "must be a non-empty string or list of token ids",
    );
  });
  const logprobs = int(body, "logprobs", 0, 20) ?? null;
  return {
    ...c,
    prompts,
    maxTokens: int(body, "max_tokens", 1) ?? 16,
    params: sampling(body, logprobs),
  };
}

/** A /v1/chat/completions body: the messages rendered with the chat template. */
export function parseChat(body: Json, tok: QwenTokenizer): ParsedRequest {
  const c = common(body);
  const messages = body.messages;
  if (!Array.isArray(messages) || messages.length === 0) {
    throw bad("messages", "must be a non-empty list of {role, content}");
  }
  const rendered = messages.map((m, i) => {
    const role = (m as Json)?.role;
    let content = (m as Json)?.content;
    if (!["system", "user", "assistant", "developer"].includes(role as string)) {
      throw bad(`messages[${i}].role`, "must be system, user or assistant");
    }
    if (Array.isArray(content)) {
      content = content.map((part, j) => {
        if ((part as Json)?.type !== "text" || typeof (part as Json).text !== "string") {
          throw bad(`messages[${i}].content[${j}]`, 'must be a text part ({type: "text", text})');
        }
        return (part as Json).text;
      }).join("");
    }
    if (typeof content !== "string") throw bad(`messages[${i}].content`, "must be a string");
    return { role: role === "developer" ? "system" : role as string, content };
  });
  if (!tok.hasChatTemplate) {
    throw new ApiError(400, "this model has no chat template: use /v1/completions", "messages");
  }
  const kwargs = body.chat_template_kwargs;
  if (kwargs !== undefined && (typeof kwargs !== "object" || Array.isArray(kwargs) || !kwargs)) {
    throw bad("chat_template_kwargs", "must be an object");
  }
  const text = tok.applyChatTemplate(rendered, {
    addGenerationPrompt: true,
    ...(kwargs as Json | undefined),
  });
  const wantLogprobs = bool(body, "logprobs") ?? false;
  const top = int(body, "top_logprobs", 0, 20);
  if (top !== undefined && !wantLogprobs) {
    throw new ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs");
  }
  const maxTokens = int(body, "max_completion_tokens", 1) ?? int(body, "max_tokens", 1) ?? null;
  return {
    ...c,
    prompts: [tok.encode(text)],
    maxTokens,
    params: sampling(body, wantLogprobs ? top ?? 0 : null),
  };
}

/** A finished or streamed choice's pieces, accumulated. */
export interface ChoiceResult {
  text: string;
  tokens: TokenInfo[];
  finishReason: ChoiceEvent["finishReason"] | null;
}

const bytesOf = (s: string) => Array.from(new TextEncoder().encode(s));

/** logprobs of a completion choice (the legacy shape), with entropies when asked. */
export function completionLogprobs(tokens: TokenInfo[], tok: QwenTokenizer, entropy: boolean) {
  let offset = 0;
  const strings = tokens.map((t) => tok.decode([t.id]));
  return {
    tokens: strings,
    token_logprobs: tokens.map((t) => t.logprob ?? null),
    top_logprobs: tokens.map((t) =>
      t.top ? Object.fromEntries(t.top.map((x) => [tok.decode([x.id]), x.logprob])) : null
    ),
    text_offset: strings.map((s) => {
      const at = offset;
      offset += s.length;
      return at;
    }),
    ...(entropy ? { entropies: tokens.map((t) => t.entropy ?? null) } : {}),
  };
}

/** logprobs of a chat choice: content entries of token, logprob, bytes, top_logprobs (entropy). */
export function chatLogprobs(tokens: TokenInfo[], tok: QwenTokenizer, entropy: boolean) {
  return {
    content: tokens.map((t) => {
      const token = tok.decode([t.id]);
      return {
        token,
        logprob: t.logprob ?? null,
        bytes: bytesOf(token),
        top_logprobs: (t.top ?? []).map((x) => {
          const s = tok.decode([x.id]);
          return { token: s, logprob: x.logprob, bytes: bytesOf(s) };
        }),
        ...(entropy ? { entropy: t.entropy ?? null } : {}),
      };
    }),
  };
}
