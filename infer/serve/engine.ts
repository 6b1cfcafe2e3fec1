/**
 * Continuous batching: every running sequence shares one decoding step.
 * A request that arrives while others decode is prefilled (with the other
 * newcomers, right-padded, on a cache of their own) and joins the running
 * batch at the next step; a finished sequence leaves it and frees its slot.
 * Sequences of different LoRA adapters take turns within a step (one forward
 * each, the others' rows masked); with or without EM-INF or adaptive
 * temperature they share the forward, each row's logits processed as its
 * request asks. Each sequence draws its sampling uniforms from its own
 * seeded generator and every kernel treats rows alone, so a seed gives the
 * same tokens whatever else is in the batch.
 *
 * Steps run one ahead of the host: step t+1 is encoded while the ids of step
 * t are read back (Deno's readback waits about 11 ms), then tokens are
 * detokenized, checked against stop strings and streamed.
 * @module
 */
import { device } from "../../engine/device.ts";
import type { CausalLM } from "../../engine/model/causal_lm.ts";
import type { LoraAdapters } from "../../engine/model/lora.ts";
import { embedding, reshape } from "../../engine/ops/mod.ts";
import { keep, noGrad, tidy } from "../../engine/scope.ts";
import { Tensor } from "../../engine/tensor.ts";
import { launch } from "../../engine/launch.ts";
import { mergeIdsKernel } from "../../kernels/sample.ts";
import { sampleTokensPerRow } from "../sampling.ts";
import { SlotCache } from "./slots.ts";
import { groupBy, type ReadPart, sampleRows, topK } from "./sample_rows.ts";
import {
  type ChoiceEvent,
  type GenerationRequest,
  QueueFullError,
  Sequence,
  type TokenInfo,
} from "./sequence.ts";

export {
  type ChoiceEvent,
  EventQueue,
  type GenerationRequest,
  QueueFullError,
  type SamplingParams,
  type TokenInfo,
} from "./sequence.ts";

export interface EngineStats {
  running: number;
  waiting: number;
  batch: number;
  steps: number;
  promptTokens: number;
  generationTokens: number;
}

export interface EngineOptions {
  /** Sequences decoding at once (KV cache slots). */
  maxBatch: number;
  /** Tokens per sequence, prompt included. */
  maxModelLen: number;
  /** Requests waiting beyond the running ones before new ones are refused. */
  maxQueue: number;
  /** Called with each first token's latency and each later token's, in seconds. */
  observe?: (kind: "ttft" | "tpot", seconds: number) => void;
}

/** Parts encoded on the GPU whose results are not read back yet. */
interface Pending {
  parts: ReadPart[];
  read: Promise<ArrayBuffer[]>;
}

export class Engine {
  /** The model served (replaced whole by replaceModel). */
  model: CausalLM;
  readonly options: EngineOptions;
  readonly stats: EngineStats = {
    running: 0,
    waiting: 0,
    batch: 0,
    steps: 0,
    promptTokens: 0,
    generationTokens: 0,
  };
  readonly #cache: SlotCache;
  readonly #slots: (Sequence | null)[];
  readonly #waiting: Sequence[] = [];
  /** Each slot's last token (the next step's input), on the GPU. */
  #lastIds: Tensor;
  #wake: (() => void) | null = null;
  #loop: Promise<void> | null = null;
  #stopping = false;
  #error: Error | null = null;
  /** Set while replaceModel waits for the running sequences to end: none are admitted. */
  #paused: Promise<void> | null = null;
  /** The loop has sequences running or a step still being read. */
  #busy = false;

  constructor(model: CausalLM, options: EngineOptions) {
    this.model = model;
    this.options = options;
    this.#cache = new SlotCache(model.config, options.maxBatch, options.maxModelLen);
    this.#slots = new Array(options.maxBatch).fill(null);
    this.#lastIds = keep(Tensor.zeros([options.maxBatch], { dtype: "i32" }));
  }

  /** GPU bytes of the KV cache. */
  get cacheBytes(): number {
    return this.#cache.bytes;
  }

  /** Queues a request; returns one event stream per choice. Throws QueueFullError. */
  submit(
    request: GenerationRequest,
  ): { choices: AsyncIterable<ChoiceEvent>[]; cancel: () => void } {
    if (this.#error) throw this.#error;
    if (this.#stopping) throw new Error("the server is shutting down");
    if (this.#waiting.length + request.n > this.options.maxQueue) {
      throw new QueueFullError(this.#waiting.length);
    }
    const seqs = Array.from({ length: request.n }, (_, i) => new Sequence(request, i));
    this.#waiting.push(...seqs);
    this.stats.waiting = this.#waiting.length;
    this.#wake?.();
    this.#loop ??= this.#run().catch((e) => {
      // a fault the loop cannot recover from: every sequence ends, later requests are refused
      this.#error = e instanceof Error ? e : new Error(String(e));
      console.error(`error: the decoding loop stopped: ${this.#error.message}`);
      for (const s of [...this.#waiting, ...this.#slots]) if (s) this.#finish(s, "abort");
    }).finally(() => this.#loop = null);
    return {
      choices: seqs.map((s) => s.events),
      cancel: () => {
        seqs.forEach((s) => s.cancelled = true);
        this.#wake?.();
      },
    };
  }

  /**
   * Compiles every pipeline a decoding step may need before the first request
   * (a CPU adapter takes a while per shader): one step at each batch-size
   * class (1, 2, 4, 8, ... up to maxBatch) on dummy slots.
   */
  async warmUp(): Promise<void> {
    const sizes = [1, 2, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 256]
      .filter((n) => n <= this.options.maxBatch);
    for (const rows of sizes) {
      const take = new Array(rows).fill(true);
      for (let r = 0; r < rows; r++) this.#cache.lengths[r] = 1;
      const { mask, positions } = this.#cache.beginStep(rows, take);
      const part = noGrad(() =>
        tidy(() => {
          const hidden = this.model.hidden(reshape(this.#lastIds.prefix([rows]), [rows, 1]), {
            attentionMask: mask,
            positionIds: positions,
            cache: this.#cache,
          });
          const logits = reshape(this.model.head(hidden), [rows, this.model.config.vocabSize]);
          return sampleTokensPerRow(
            logits,
            take.map(() => ({ temperature: 1 })),
            take.map(() => 0.5),
          );
        })
      );
      await part.toArray();
      part.dispose();
    }
    this.#cache.lengths.fill(0);
  }

  /**
   * Serves `next` instead of the current model, which is returned (the
   * caller disposes it): new sequences wait while the running ones finish on
   * the old weights (as SGLang's update_weights_from_disk), then the swap.
   */
  async replaceModel(next: CausalLM): Promise<CausalLM> {
    while (this.#paused) await this.#paused;
    const done = Promise.withResolvers<void>();
    this.#paused = done.promise;
    try {
      while (this.#slots.some((s) => s !== null) || this.#busy) {
        await new Promise((r) => setTimeout(r, 10));
      }
      const old = this.model;
      this.model = next;
      return old;
    } finally {
      this.#paused = null;
      done.resolve();
      this.#wake?.();
    }
  }

  /** Stops admitting; resolves when every running and waiting sequence has ended. */
  async drain(): Promise<void> {
    this.#stopping = true;
    this.#wake?.();
    await this.#loop;
  }

  /** Ends every sequence now (their streams report "abort"). */
  cancelAll(): void {
    for (const s of [...this.#waiting, ...this.#slots]) if (s) s.cancelled = true;
    this.#wake?.();
  }

  dispose(): void {
    this.#cache.dispose();
    this.#lastIds.dispose();
  }

  async #run(): Promise<void> {
    let pending: Pending | null = null;
    for (;;) {
      this.#reap();
      const parts = this.#admit();
      const active = this.#slots.filter((s): s is Sequence => s !== null);
      this.stats.running = active.length;
      this.stats.waiting = this.#waiting.length;
      this.#busy = active.length > 0 || pending !== null;
      if (active.length === 0 && !pending) {
        if (this.#waiting.length === 0 || this.#paused) {
          if (this.#stopping && this.#waiting.length === 0) return;
          await new Promise<void>((r) => this.#wake = r);
          this.#wake = null;
        }
        continue;
      }
      // every running sequence has a token to feed (joiners got theirs from the prefill)
      if (active.length) parts.push(...this.#step(active));
      const next = parts.length ? this.#read(parts) : null;
      if (pending) await this.#collect(pending);
      pending = next;
    }
  }

  /** Cancelled sequences end; finished ones leave their slots. */
  #reap(): void {
    for (let i = 0; i < this.#waiting.length; i++) {
      if (this.#waiting[i].cancelled) {
        this.#finish(this.#waiting[i], "abort");
        this.#waiting.splice(i--, 1);
      }
    }
    this.#slots.forEach((s, i) => {
      if (s && (s.finished || s.cancelled)) {
        this.#finish(s, "abort");
        this.#slots[i] = null;
      }
    });
  }

  /**
   * Prefills as many waiting sequences as there are free slots (right-padded
   * together, each at its own positions from 0), copies their keys and values
   * into their slots and samples each one's first token.
   */
  #admit(): ReadPart[] {
    if (this.#paused) return [];
    const free = this.#slots.map((s, i) => (s ? -1 : i)).filter((i) => i >= 0);
    const joiners = this.#waiting.splice(0, free.length);
    this.stats.waiting = this.#waiting.length;
    const parts: ReadPart[] = [];
    joiners.forEach((s, k) => {
      s.slot = free[k];
      this.#slots[free[k]] = s;
      this.#cache.lengths[s.slot] = 0;
      this.stats.promptTokens += s.request.promptIds.length;
    });
    // by adapter: each group's prefill is one forward
    for (const group of groupBy(joiners, (s) => s.request.adapter?.adapters ?? null)) {
      this.#useAdapter(group[0].request.adapter);
      const lengths = group.map((s) => s.request.promptIds.length);
      const P = Math.max(...lengths);
      const ids = group.flatMap((s) => [
        ...s.request.promptIds,
        ...new Array(P - s.request.promptIds.length).fill(0),
      ]);
      const mask = lengths.flatMap((n) => Array.from({ length: P }, (_, t) => (t < n ? 1 : 0)));
      const positions = group.flatMap(() => Array.from({ length: P }, (_, t) => t));
      const cache = this.model.createCache(group.length, P, { batchInvariant: true });
      try {
        const part = noGrad(() =>
          tidy(() => {
            const hidden = this.model.hidden(
              Tensor.from(ids, [group.length, P], { dtype: "i32" }),
              { attentionMask: mask, positionIds: positions, cache },
            );
            const C = hidden.shape[2];
            const at = lengths.map((n, j) => j * P + n - 1); // each one's last prompt token
            const last = embedding(
              reshape(hidden, [group.length * P, C]),
              Tensor.from(at, [at.length], { dtype: "i32" }),
            );
            group.forEach((s, j) => this.#cache.fill(s.slot, cache, j, lengths[j]));
            return sampleRows(this.model.head(last), group);
          })
        );
        this.#merge(part.ids, group.map((s) => s.slot));
        parts.push(part);
      } finally {
        cache.dispose();
      }
    }
    return parts;
  }

  /** One decoding step of every active sequence, one forward per adapter group. */
  #step(active: Sequence[]): ReadPart[] {
    const rows = Math.max(...active.map((s) => s.slot)) + 1;
    const all: (Sequence | null)[] = this.#slots.slice(0, rows);
    this.stats.batch = active.length;
    this.stats.steps++;
    const parts: ReadPart[] = [];
    for (const group of groupBy(active, (s) => s.request.adapter?.adapters ?? null)) {
      this.#useAdapter(group[0].request.adapter);
      const take = all.map((s) => s !== null && group.includes(s));
      const { mask, positions } = this.#cache.beginStep(rows, take);
      const part = noGrad(() =>
        tidy(() => {
          const input = reshape(this.#lastIds.prefix([rows]), [rows, 1]);
          const hidden = this.model.hidden(input, {
            attentionMask: mask,
            positionIds: positions,
            cache: this.#cache,
          });
          const logits = reshape(this.model.head(hidden), [rows, this.model.config.vocabSize]);
          return sampleRows(logits, all.map((s, r) => (take[r] ? s : null)));
        })
      );
      parts.push(part);
      this.#merge(part.ids, all.map((_, r) => r).filter((r) => take[r]), take);
    }
    for (const s of active) this.#cache.lengths[s.slot]++;
    return parts;
  }

  /** Starts reading parts back (one readback for all of them). */
  #read(parts: ReadPart[]): Pending {
    const tensors = parts.flatMap((p) =>
      [p.ids, p.logprob, p.entropy, p.top].filter((t): t is Tensor => t !== null)
    );
    return {
      parts,
      read: device().readMany(tensors.map((t) => ({ buffer: t.buffer, bytes: t.byteLength }))),
    };
  }

  /** Points the model at an adapter (or the base). */
  #useAdapter(a: GenerationRequest["adapter"]): void {
    const adapters = a?.adapters ?? null;
    if (this.model.adapters !== adapters) this.model.setAdapters(adapters);
  }

  /** True while a running or waiting sequence uses these adapters. */
  uses(adapters: LoraAdapters): boolean {
    return [...this.#waiting, ...this.#slots].some((s) =>
      s !== null && !s.finished && s.request.adapter?.adapters === adapters
    );
  }

  /**
   * Writes sampled ids into the slots they belong to: `ids[j]` goes to
   * `slots[j]` (prefill order), or with `take`, `ids[r]` to slot r where take[r].
   */
  #merge(ids: Tensor, slots: number[], take?: boolean[]): void {
    const src = new Array(this.options.maxBatch).fill(-1);
    if (take) take.forEach((t, r) => t && (src[r] = r));
    else slots.forEach((slot, j) => src[slot] = j);
    const out = keep(Tensor.empty([this.options.maxBatch], "i32"));
    const index = Tensor.from(src, [src.length], { dtype: "i32" });
    launch(
      mergeIdsKernel,
      { old: this.#lastIds, fresh: ids, src: index, out },
      { n: src.length },
      src.length,
    );
    index.dispose();
    this.#lastIds.dispose();
    this.#lastIds = out;
  }

  /** Reads parts back and hands each sequence its token, in order. */
  async #collect(p: Pending): Promise<void> {
    const raw = await p.read;
    let k = 0;
    const now = performance.now();
    const V = this.model.config.vocabSize;
    for (const part of p.parts) {
      const ids = new Int32Array(raw[k++]);
      const lp = part.logprob ? new Float32Array(raw[k++]) : null;
      const h = part.entropy ? new Float32Array(raw[k++]) : null;
      const top = part.top ? new Float32Array(raw[k++]) : null;
      [part.ids, part.logprob, part.entropy, part.top].forEach((t) => t?.dispose());
      part.rows.forEach((s, r) => {
        if (!s || s.finished || s.cancelled || this.#slots[s.slot] !== s) return;
        const params = s.request.params;
        const info: TokenInfo = { id: ids[r] };
        if (lp && params.logprobs !== null) info.logprob = lp[r];
        if (h && params.entropy) info.entropy = h[r];
        if (top && (params.logprobs ?? 0) > 0) {
          info.top = topK(top.subarray(r * V, (r + 1) * V), params.logprobs!);
        }
        const first = s.ids.length === 0;
        this.options.observe?.(
          first ? "ttft" : "tpot",
          (now - (first ? s.startedAt : s.lastTokenAt)) / 1000,
        );
        s.lastTokenAt = now;
        this.#accept(s, info);
      });
    }
  }

  /** Adds a token to a sequence (Sequence.accept: eos, stop strings and max_tokens end it). */
  #accept(s: Sequence, info: TokenInfo): void {
    this.stats.generationTokens++;
    s.accept(info, this.model.tokenizer!, this.model.generation.eosTokenIds);
  }

  #finish(s: Sequence, reason: NonNullable<ChoiceEvent["finishReason"]>): void {
    s.finish(reason);
  }
}
