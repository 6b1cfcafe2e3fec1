/**
 * A request and its choices as the engine runs them: sampling parameters,
 * one Sequence per choice with its seeded generator, its slot, and the
 * stream of text and tokens it emits (eos, stop strings, max_tokens).
 * @module
 */
import type { QwenTokenizer } from "../../engine/model/tokenizer.ts";
import type { LoraAdapters } from "../../engine/model/lora.ts";
import { Rng } from "../../engine/random.ts";
import type { AdaptiveTemperatureOptions } from "../baselines.ts";
import type { EmInfOptions } from "../em_inf.ts";
import type { SamplingOptions } from "../sampling.ts";

/** How one request samples, stops and reports. */
export interface SamplingParams extends SamplingOptions {
  maxTokens: number;
  /** Strings that end a sequence (not included in its text). */
  stop: string[];
  /** Token ids that end a sequence, besides the model's eos. */
  stopTokenIds: number[];
  /** Keep generating past eos (benchmarks: exactly maxTokens tokens). */
  ignoreEos?: boolean;
  /** Seed of choice 0; choice i uses seed + i. */
  seed: number;
  /** Report the sampled token's log-prob, and this many top alternatives (null: none). */
  logprobs: number | null;
  /** Report the entropy of each token's distribution. */
  entropy: boolean;
  emInf: EmInfOptions | null;
  adaptive: AdaptiveTemperatureOptions | null;
}

export interface GenerationRequest {
  promptIds: number[];
  /** Choices to sample. */
  n: number;
  params: SamplingParams;
  /** The LoRA adapter (as loaded when the request came), or null for the base model. */
  adapter: { name: string; adapters: LoraAdapters } | null;
}

/** One generated token and what was asked of it. */
export interface TokenInfo {
  id: number;
  /** log p of the token under the distribution sampled from (softmax(z / T), after EM-INF). */
  logprob?: number;
  top?: { id: number; logprob: number }[];
  entropy?: number;
}

/** What a choice streams: new text and tokens, then once its finish reason. */
export interface ChoiceEvent {
  text: string;
  tokens: TokenInfo[];
  finishReason?: "stop" | "length" | "abort";
}

/** A queue a consumer iterates while the engine pushes. */
export class EventQueue<T> implements AsyncIterable<T> {
  #items: T[] = [];
  #wake: (() => void) | null = null;
  #closed = false;
  push(item: T): void {
    this.#items.push(item);
    this.#wake?.();
  }
  close(): void {
    this.#closed = true;
    this.#wake?.();
  }
  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      if (this.#items.length) {
        yield this.#items.shift()!;
        continue;
      }
      if (this.#closed) return;
      await new Promise<void>((r) => this.#wake = r);
      this.#wake = null;
    }
  }
}

/** One choice of a request: a sequence in a slot. */
export class Sequence {
  readonly events = new EventQueue<ChoiceEvent>();
  readonly ids: number[] = [];
  readonly rng: Rng;
  slot = -1;
  /** Text already streamed (what might start a stop string is held back). */
  emitted = "";
  finished = false;
  cancelled = false;
  lastTokenAt = 0;
  readonly startedAt = performance.now();
  #pending: TokenInfo[] = [];

  constructor(readonly request: GenerationRequest, readonly index: number) {
    this.rng = new Rng(request.params.seed + index);
  }

  queueToken(t: TokenInfo): void {
    this.#pending.push(t);
  }

  takeTokens(): TokenInfo[] {
    const out = this.#pending;
    this.#pending = [];
    return out;
  }

  /** Adds a token to a sequence: eos, stop strings and max_tokens end it. */
  accept(info: TokenInfo, tok: QwenTokenizer, eos: number[]): void {
    const p = this.request.params;
    this.ids.push(info.id);
    const isStop = (!p.ignoreEos && eos.includes(info.id)) || p.stopTokenIds.includes(info.id);
    // as vLLM: the stop token is in token_ids and logprobs, not in the text
    this.queueToken(info);
    const ids = isStop ? this.ids.slice(0, -1) : this.ids;
    let text = tok.decode(ids, { skipSpecialTokens: true });
    let reason: ChoiceEvent["finishReason"] | undefined = isStop ? "stop" : undefined;
    const hit =
      p.stop.map((x) => [text.indexOf(x, Math.max(0, this.emitted.length - x.length)), x.length])
        .filter(([i]) => i >= 0).sort((a, b) => a[0] - b[0])[0];
    if (hit) {
      text = text.slice(0, hit[0]);
      reason = "stop";
    }
    if (!reason && this.ids.length >= p.maxTokens) reason = "length";
    // hold back what could be the start of a stop string, and a character still being spelt
    const hold = reason ? 0 : Math.max(0, ...p.stop.map((x) => x.length - 1));
    let safe = text.length - hold;
    if (!reason && text.endsWith("\uFFFD")) safe = Math.min(safe, text.length - 1);
    if (safe > this.emitted.length || reason) {
      const upTo = reason ? text.length : safe;
      this.events.push({ text: text.slice(this.emitted.length, upTo), tokens: this.takeTokens() });
      this.emitted = text.slice(0, upTo);
    }
    if (reason) this.finish(reason);
  }

  /** Ends a sequence's stream with its reason (once). */
  finish(reason: NonNullable<ChoiceEvent["finishReason"]>): void {
    if (this.finished) return;
    this.finished = true;
    this.events.push({ text: "", tokens: this.takeTokens(), finishReason: reason });
    this.events.close();
  }
}

/** Thrown when the waiting queue is full (HTTP 429). */
export class QueueFullError extends Error {
  constructor(readonly waiting: number) {
    super(`the server is at capacity (${waiting} requests waiting); retry shortly`);
    this.name = "QueueFullError";
  }
}

/** What a step measured, for metrics. */
