/**
 * Rollouts from inference servers speaking OpenAI's protocol (vLLM, SGLang,
 * `deno task serve`), as verl and TRL hand generation to vLLM: a Sampler
 * whose requests go to the least-loaded server (in-flight requests), prompts
 * as token ids, the sampled ids and their log-probs taken back exactly
 * (vLLM's `return_token_ids`), one request per prompt with its own seed. A
 * server that fails, times out or disappears has its requests retried on the
 * others; when none answers, a RolloutError ends the run.
 *
 * After each update the servers get the new weights (`sync`): LoRA adapters
 * are written to the sync directory and loaded under a new versioned name
 * (vLLM's POST /v1/load_lora_adapter), which the next rollouts ask for, and
 * the previous version is unloaded once no request uses it; full weights are
 * written as a checkpoint and reloaded through SGLang's
 * POST /update_weights_from_disk (vLLM has no such route: refused up front).
 * @module
 */
import { replaceDirectory, tempDirectoryBeside } from "../engine/atomic.ts";
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { saveModel } from "../engine/model/checkpoint.ts";
import type { Sampled, Sampler, SampleRequest } from "../infer/sampler.ts";
import { parseCompletion } from "./completion.ts";
import { RolloutError } from "./rollout_error.ts";

export { RolloutError };

/** Which engine a server is, from its /v1/models `owned_by`. */
export type ServerKind = "em-webgpu" | "vllm" | "sglang" | "other";

export interface RolloutServerOptions {
  /** Seconds a request may take before it is retried on another server. */
  timeoutSeconds: number;
  /** Further attempts of a request that failed, each on the least-loaded server. */
  retries: number;
  /** Where weights are written for the servers to read (shared storage across machines). */
  syncDir: string;
  /** Sent as "Authorization: Bearer KEY". */
  apiKey?: string | null;
  log?: (line: string) => void;
}

interface Server {
  /** Base URL without /v1. */
  url: string;
  kind: ServerKind;
  /** Requests in flight, by the model name they ask for. */
  inFlight: Map<string, number>;
  /** Requests answered. */
  answered: number;
  /** Consecutive failures, and until when (ms) it is skipped. */
  failures: number;
  downUntil: number;
  /** It serves the current weights (a server that missed a sync is not asked). */
  current: boolean;
}

const CONNECT_TIMEOUT_MS = 10_000;

/** `http://host:port/v1/` -> `http://host:port`. */
function baseUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new RolloutError(`--rollout-server: "${url}" is not a URL (e.g. http://127.0.0.1:8000)`);
  }
  return `${u.origin}${u.pathname.replace(/\/+$/, "").replace(/\/v1$/, "")}`;
}

function total(m: Map<string, number>): number {
  let n = 0;
  for (const v of m.values()) n += v;
  return n;
}

/** Waits `ms`, or less if `signal` aborts (then throws its reason). */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      reject(signal.reason);
    }, { once: true });
  });
}

export class RolloutServers {
  readonly #servers: Server[];
  readonly #o: RolloutServerOptions;
  readonly #vocabSize: number;
  /** The base model's name on the servers. */
  readonly baseModel: string;
  /** The name rollouts ask for: the base model, or the current adapter version. */
  model: string;
  /** Names weight versions (adapters, directories) so that runs sharing servers never collide. */
  readonly #tag = `em-${crypto.randomUUID().slice(0, 8)}`;
  #version: { name: string; dir: string } | null = null;
  /** Adapter versions still to unload, per server, once nothing in flight uses them. */
  #retired: { name: string; dir: string; servers: Set<Server> }[] = [];

  private constructor(
    servers: Server[],
    baseModel: string,
    vocabSize: number,
    o: RolloutServerOptions,
  ) {
    this.#servers = servers;
    this.baseModel = baseModel;
    this.model = baseModel;
    this.#vocabSize = vocabSize;
    this.#o = o;
  }

  /**
   * Asks each server for its models (GET /v1/models): every one must answer
   * and serve the same base model. `vocabSize` bounds the token ids accepted.
   */
  static async connect(
    urls: string[],
    vocabSize: number,
    o: RolloutServerOptions,
  ): Promise<RolloutServers> {
    if (urls.length === 0) throw new RolloutError("--rollout-server: no URL given");
    const bases = urls.map(baseUrl);
    const twice = bases.find((u, i) => bases.indexOf(u) !== i);
    if (twice) throw new RolloutError(`--rollout-server: ${twice} is listed twice`);
    const found = await Promise.all(bases.map(async (url) => {
      let res: Response;
      try {
        res = await fetch(`${url}/v1/models`, {
          headers: RolloutServers.#headers(o.apiKey),
          signal: AbortSignal.timeout(CONNECT_TIMEOUT_MS),
        });
      } catch (e) {
        throw new RolloutError(
          `--rollout-server ${url}: cannot reach it (${(e as Error).message})`,
        );
      }
      const text = await res.text();
      if (!res.ok) {
        throw new RolloutError(
          `--rollout-server ${url}: GET /v1/models answered ${res.status}: ${text.slice(0, 200)}`,
        );
      }
      let first: { id?: unknown; owned_by?: unknown } | undefined;
      try {
        first = JSON.parse(text)?.data?.[0];
      } catch { /* checked below */ }
      if (typeof first?.id !== "string") {
        throw new RolloutError(
          `--rollout-server ${url}: GET /v1/models is not an OpenAI model list: ${
            text.slice(0, 200)
          }`,
        );
      }
      const owner = String(first.owned_by ?? "");
      const kind: ServerKind = owner === "em-webgpu" || owner === "vllm" || owner === "sglang"
        ? owner
        : "other";
      return { url, kind, model: first.id };
    }));
    const models = [...new Set(found.map((f) => f.model))];
    if (models.length > 1) {
      throw new RolloutError(
        `--rollout-server: the servers serve different models: ${
          found.map((f) => `${f.url} serves ${f.model}`).join(", ")
        }`,
      );
    }
    const servers = found.map((f): Server => ({
      url: f.url,
      kind: f.kind,
      inFlight: new Map(),
      answered: 0,
      failures: 0,
      downUntil: 0,
      current: true,
    }));
    return new RolloutServers(servers, models[0], vocabSize, o);
  }

  static #headers(apiKey?: string | null): Record<string, string> {
    return {
      "content-type": "application/json",
      ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}),
    };
  }

  /** Each server: its URL, engine and requests answered so far. */
  get servers(): { url: string; kind: ServerKind; answered: number; current: boolean }[] {
    return this.#servers.map((s) => ({
      url: s.url,
      kind: s.kind,
      answered: s.answered,
      current: s.current,
    }));
  }

  /**
   * Why full fine-tuning cannot sync its weights to these servers, or null.
   * SGLang and `deno task serve` reload a checkpoint from disk
   * (/update_weights_from_disk); vLLM's OpenAI server has no such route.
   */
  fullWeightsProblem(): string | null {
    const vllm = this.#servers.filter((s) => s.kind === "vllm").map((s) => s.url);
    if (vllm.length === 0) return null;
    return `--rollout-server ${
      vllm.join(", ")
    }: vLLM cannot reload full weights through its HTTP API, so full fine-tuning cannot reach it after each update; train LoRA adapters (--lora-rank R; serve with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) or use SGLang servers`;
  }

  /** Rollouts from the servers (prompt-major, as localSampler), with their log-probs. */
  readonly sampler: Sampler = async (r: SampleRequest): Promise<Sampled> => {
    const parts = await Promise.all(r.prompts.map((ids, i) => this.#complete(ids, i, r)));
    return { tokens: parts.flatMap((p) => p.tokens), logprobs: parts.flatMap((p) => p.logprobs) };
  };

  /** One prompt's n responses, retried across servers (with the weights current at each attempt). */
  async #complete(
    prompt: number[],
    index: number,
    r: SampleRequest,
  ): Promise<{ tokens: number[][]; logprobs: number[][] }> {
    const request = {
      prompt,
      n: r.n,
      max_tokens: r.maxNewTokens,
      temperature: r.greedy ? 0 : r.temperature,
      top_p: r.greedy ? 1 : r.topP,
      // each prompt its own seed (ours gives choice i seed + i; vLLM draws its n from it)
      seed: (r.seed + index * r.n) % 2 ** 31,
      logprobs: 0,
      return_token_ids: true,
      stop_token_ids: r.eosTokenIds,
      skip_special_tokens: false,
    };
    const errors: string[] = [];
    const deadline = Date.now() + 4 * this.#o.timeoutSeconds * 1000 * (this.#o.retries + 1);
    for (let attempt = 0; attempt <= this.#o.retries;) {
      r.signal?.throwIfAborted();
      const s = this.#pick();
      if (!s) {
        throw new RolloutError(
          `no rollout server has the current weights${
            errors.length ? `: ${errors.join("; ")}` : ""
          }`,
        );
      }
      const wait = s.downUntil - Date.now();
      if (wait > 0) await sleep(wait, r.signal); // every server is down: give the least-down a moment
      const model = this.model;
      s.inFlight.set(model, (s.inFlight.get(model) ?? 0) + 1);
      let res: Response;
      let text: string;
      try {
        const signal = AbortSignal.any([
          AbortSignal.timeout(this.#o.timeoutSeconds * 1000),
          ...(r.signal ? [r.signal] : []),
        ]);
        res = await fetch(`${s.url}/v1/completions`, {
          method: "POST",
          headers: RolloutServers.#headers(this.#o.apiKey),
          body: JSON.stringify({ model: this.#modelOn(s, model), ...request }),
          signal,
        });
        text = await res.text();
      } catch (e) {
        r.signal?.throwIfAborted();
        const why = (e as Error).name === "TimeoutError"
          ? `no answer within ${this.#o.timeoutSeconds} s`
          : (e as Error).message;
        errors.push(`${s.url}: ${why}`);
        this.#failed(s, why);
        attempt++;
        continue;
      } finally {
        s.inFlight.set(model, s.inFlight.get(model)! - 1);
        this.#unloadRetired();
      }
      if (res.status === 429 && Date.now() < deadline) {
        // its queue is full: not a fault; wait as asked, then try the least-loaded again
        await sleep(1000 * Number(res.headers.get("retry-after") ?? 1), r.signal);
        continue;
      }
      if (res.status >= 500 || res.status === 429) {
        const why = `${res.status} ${text.slice(0, 200)}`;
        errors.push(`${s.url}: ${why}`);
        this.#failed(s, why);
        attempt++;
        continue;
      }
      if (!res.ok) {
        // the request itself is refused: no other server would take it
        throw new RolloutError(
          `rollout server ${s.url} refused a request for ${model} (${res.status}): ${
            text.slice(0, 300)
          }`,
        );
      }
      s.failures = 0;
      s.downUntil = 0;
      s.answered++;
      return parseCompletion(s.url, this.#vocabSize, text, r);
    }
    throw new RolloutError(
      `no rollout server answered (${this.#o.retries + 1} attempts): ${errors.join("; ")}`,
    );
  }

  /** The name a server knows a version by: SGLang selects adapters as "base:adapter". */
  #modelOn(s: Server, model: string): string {
    return s.kind === "sglang" && model !== this.baseModel ? `${this.baseModel}:${model}` : model;
  }

  /** The least-loaded server with the current weights; those up before those down. */
  #pick(): Server | null {
    const now = Date.now();
    const ready = this.#servers.filter((s) => s.current);
    if (ready.length === 0) return null;
    return ready.reduce((best, s) => {
      const [a, b] = [s.downUntil > now, best.downUntil > now];
      if (a !== b) return a ? best : s;
      if (a && b) return s.downUntil < best.downUntil ? s : best;
      return total(s.inFlight) < total(best.inFlight) ? s : best;
    });
  }

  /** Skips a failing server for a while (1, 2, 4 ... 30 s). */
  #failed(s: Server, why: string): void {
    const wasUp = s.downUntil <= Date.now();
    s.failures++;
    s.downUntil = Date.now() + Math.min(30_000, 1000 * 2 ** (s.failures - 1));
    // once per outage, not once per request in flight
    if (wasUp) {
      this.#o.log?.(`rollout server ${s.url} failed (${why}); its requests go to the others`);
    }
  }

  /**
   * Makes every server serve the model's current weights as version
   * `version` (the step): LoRA adapters loaded under a new name, or full
   * weights reloaded from a checkpoint. A server that cannot be reached
   * misses the version (it is not asked again until a later sync reaches
   * it); one that refuses, or no server taking it, is a RolloutError.
   */
  async sync(model: CausalLM, version: number, loraBase: string | null): Promise<void> {
    const name = `${this.#tag}-v${version}`;
    const dir = `${this.#o.syncDir}/${name}`;
    await Deno.mkdir(this.#o.syncDir, { recursive: true });
    const path = await Deno.realPath(this.#o.syncDir).then((d) => `${d}/${name}`);
    const t0 = performance.now();
    if (model.adapters) {
      const tmp = await tempDirectoryBeside(dir);
      await model.adapters.save(tmp, loraBase);
      await replaceDirectory(tmp, dir);
    } else {
      await saveModel(model, dir, { copyFrom: model.sourceDir });
    }
    const written = performance.now();
    const results = await Promise.all(this.#servers.map(async (s) => {
      const lora = model.adapters !== null;
      const route = lora
        ? (s.kind === "sglang" ? "/load_lora_adapter" : "/v1/load_lora_adapter")
        : "/update_weights_from_disk";
      let res: Response;
      let text: string;
      try {
        res = await fetch(`${s.url}${route}`, {
          method: "POST",
          headers: RolloutServers.#headers(this.#o.apiKey),
          body: JSON.stringify(lora ? { lora_name: name, lora_path: path } : { model_path: path }),
          signal: AbortSignal.timeout(Math.max(60, this.#o.timeoutSeconds) * 1000),
        });
        text = await res.text();
      } catch (e) {
        s.current = false;
        this.#failed(s, `cannot load version ${version}: ${(e as Error).message}`);
        return false;
      }
      let success = res.ok;
      try {
        // SGLang answers {success, message}
        const j = JSON.parse(text);
        if (j && typeof j === "object" && j.success === false) success = false;
      } catch { /* vLLM answers plain text */ }
      if (!success) {
        throw new RolloutError(
          `rollout server ${s.url} could not load ${
            lora ? "the adapter" : "the weights"
          } ${path} (${res.status}): ${text.slice(0, 300)}`,
        );
      }
      s.current = true;
      return true;
    }));
    if (!results.some(Boolean)) {
      throw new RolloutError(
        `no rollout server could load version ${version} (${path}): ${
          this.#servers.map((s) => s.url).join(", ")
        } did not answer`,
      );
    }
    const previous = this.#version;
    this.#version = { name, dir };
    if (model.adapters) {
      this.model = name;
      if (previous) {
        this.#retired.push({ ...previous, servers: new Set(this.#servers) });
        this.#unloadRetired();
      }
    } else if (previous) {
      await Deno.remove(previous.dir, { recursive: true }).catch(() => {});
    }
    this.#o.log?.(
      `synced step ${version} to ${
        results.filter(Boolean).length
      }/${this.#servers.length} rollout servers (write ${
        ((written - t0) / 1000).toFixed(2)
      } s, load ${((performance.now() - written) / 1000).toFixed(2)} s)`,
    );
  }

  /** Unloads retired adapter versions from servers where nothing in flight asks for them; drops their files. */
  #unloadRetired(): void {
    for (const v of this.#retired) {
      for (const s of v.servers) {
        if ((s.inFlight.get(v.name) ?? 0) > 0) continue;
        v.servers.delete(s);
        s.inFlight.delete(v.name);
        const route = s.kind === "sglang" ? "/unload_lora_adapter" : "/v1/unload_lora_adapter";
        fetch(`${s.url}${route}`, {
          method: "POST",
          headers: RolloutServers.#headers(this.#o.apiKey),
          body: JSON.stringify({ lora_name: v.name }),
          signal: AbortSignal.timeout(30_000),
        }).then((r) => r.body?.cancel()).catch(() => {}); // a server that is gone has nothing to unload
      }
    }
    for (const v of this.#retired.filter((v) => v.servers.size === 0)) {
      Deno.remove(v.dir, { recursive: true }).catch(() => {});
    }
    this.#retired = this.#retired.filter((v) => v.servers.size > 0);
  }
}
