/**
 * One training loop for EM-FT and SFT (nanoGPT-style: defaults up top, a flat
 * loop). Each step: take prompts, build sequences (EM-FT: N samples per prompt
 * from the model itself; SFT: the labeled answer), accumulate the gradient
 * over micro-batches so the batch is not limited by memory, clip, schedule
 * the learning rate, AdamW. Metrics go to metrics.jsonl; checkpoints (HF
 * format + optimizer + trainer state) are written atomically and resumable.
 * @module
 */
import { atomicWrite, recoverDirectory } from "../engine/atomic.ts";
import type { CausalLM } from "../engine/model/decoder.ts";
import { saveModel } from "../engine/model/checkpoint.ts";
import { concat, entropy, mulScalar, neg, sum, tokenLogProb } from "../engine/ops/mod.ts";
import { AdamW, clipGradNorm } from "../engine/optim.ts";
import { Rng } from "../engine/random.ts";
import {
  readSafetensors,
  tensorFromRaw,
  tensorToRaw,
  writeSafetensors,
} from "../engine/safetensors.ts";
import { keep, noGrad, tidy } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { generate, leftPad, NonFiniteLogitsError } from "../infer/generate.ts";
import { checkExampleFits, encodePrompt, type Example, type ExampleSource } from "./data.ts";
import { type Reduce, responseMask } from "./em_ft.ts";

export type Method = "em-ft" | "sft";
export type Schedule = "constant" | "cosine";

export interface TrainOptions {
  method: Method;
  steps: number;
  /** Prompts per optimizer step. */
  batchSize: number;
  /** EM-FT: responses sampled per prompt. */
  nSamples: number;
  /** Sequences per forward/backward; gradients accumulate across them. */
  microBatch: number;
  lr: number;
  warmup: number;
  schedule: Schedule;
  weightDecay: number;
  clip: number;
  maxNewTokens: number;
  temperature: number;
  topP: number;
  reduce: Reduce;
  seed: number;
  evalEvery: number;
  saveEvery: number;
  chat: boolean;
  outDir: string;
}

export const DEFAULTS: TrainOptions = {
  method: "em-ft",
  steps: 50,
  batchSize: 32,
  nSamples: 4,
  microBatch: 64,
  lr: 1e-4,
  warmup: 0,
  schedule: "constant",
  weightDecay: 0,
  clip: 1.0,
  maxNewTokens: 64,
  temperature: 1.0,
  topP: 1.0,
  reduce: "mean",
  seed: 0,
  evalEvery: 0,
  saveEvery: 0,
  chat: false,
  outDir: "runs/em-ft",
};

/** What a training step measured. */
export interface StepMetrics {
  step: number;
  loss: number;
  /** Mean token entropy over the response positions. */
  entropy: number;
  gradNorm: number;
  lr: number;
  tokens: number;
  tokensPerSecond: number;
  seconds: number;
  [key: string]: number;
}

export interface TrainHooks {
  log?: (line: string) => void;
  /** Evaluation at step 0, every evalEvery steps and at the end; `score` (higher is better) picks the best checkpoint. */
  evaluate?: (model: CausalLM, step: number) => Promise<Record<string, number>>;
  /** Called before each step (tests inject faults here). */
  beforeStep?: (step: number, model: CausalLM) => void | Promise<void>;
}

/** Thrown when the loss or gradient stops being finite; the last good checkpoint is kept. */
export class DivergedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DivergedError";
  }
}

export interface TrainResult {
  lastStep: number;
  history: StepMetrics[];
  evaluations: { step: number; metrics: Record<string, number> }[];
  checkpoint: string | null;
  best: { step: number; score: number; dir: string } | null;
}

/** Learning rate at `step` (1-based): linear warm-up, then constant or cosine to zero. */
export function learningRate(
  o: Pick<TrainOptions, "lr" | "warmup" | "schedule" | "steps">,
  step: number,
): number {
  if (o.warmup > 0 && step <= o.warmup) return (o.lr * step) / o.warmup;
  if (o.schedule === "constant") return o.lr;
  const t = (step - o.warmup) / Math.max(1, o.steps - o.warmup);
  return 0.5 * o.lr * (1 + Math.cos(Math.PI * Math.min(1, t)));
}

/** Sequences of a step: ids and mask (B, T) and the padded prompt length P. */
export interface Batch {
  ids: number[];
  mask: number[];
  rows: number;
  length: number;
  promptLength: number;
}

/** Left-padded prompts (as generate pads them) followed by right-padded responses. */
export function packSequences(prompts: number[][], responses: number[][], pad: number): Batch {
  const left = leftPad(prompts, pad); // (B, P)
  const P = left.length;
  const R = Math.max(1, ...responses.map((r) => r.length));
  const ids: number[] = [];
  const mask: number[] = [];
  prompts.forEach((_, i) => {
    const r = responses[i];
    ids.push(...left.ids.slice(i * P, (i + 1) * P), ...r, ...new Array(R - r.length).fill(pad));
    mask.push(
      ...left.mask.slice(i * P, (i + 1) * P),
      ...r.map(() => 1),
      ...new Array(R - r.length).fill(0),
    );
  });
  return { ids, mask, rows: prompts.length, length: P + R, promptLength: P };
}

/**
 * Forward and backward over `batch` in micro-batches, accumulating into the
 * parameters' .grad exactly the gradient of the full-batch loss: each
 * micro-batch's loss is divided by the full batch's divisor. Returns the loss
 * and the sum of response-position entropies (GPU scalars) and their count.
 */
export function accumulateGradients(
  model: CausalLM,
  batch: Batch,
  method: Method,
  reduce: Reduce,
  microBatch: number,
): { loss: Tensor; entropySum: Tensor; count: number } {
  const T = batch.length;
  const positions = responseMask(batch.mask, batch.rows, T, batch.promptLength);
  const count = positions.reduce((a, b) => a + b, 0);
  const divisor = method === "sft" || reduce === "mean" ? Math.max(count, 1) : batch.rows;
  const losses: Tensor[] = [];
  const entropies: Tensor[] = [];
  for (let r0 = 0; r0 < batch.rows; r0 += microBatch) {
    const r1 = Math.min(batch.rows, r0 + microBatch);
    const ids = batch.ids.slice(r0 * T, r1 * T);
    // flat indices of the scored positions and, for SFT, the tokens they predict
    const at: number[] = [];
    const next: number[] = [];
    for (let i = 0; i < (r1 - r0) * T; i++) {
      if (positions[r0 * T + i]) at.push(i), next.push(ids[i + 1]);
    }
    if (at.length === 0) continue;
    const [loss, h] = tidy(() => {
      const hidden = model.hidden(Tensor.from(ids, [r1 - r0, T], { dtype: "i32" }), {
        attentionMask: batch.mask.slice(r0 * T, r1 * T),
      });
      const hParts: Tensor[] = [];
      const loss = model.headAt(hidden, at, (logits, from, to) => {
        const H = entropy(logits); // (n)
        hParts.push(noGrad(() => sum(H).view([1])));
        if (method === "sft") {
          const target = Tensor.from(next.slice(from, to), [to - from], { dtype: "i32" });
          return mulScalar(neg(sum(tokenLogProb(logits, target))), 1 / divisor);
        }
        return mulScalar(sum(H), 1 / divisor);
      });
      loss.backward();
      const h = noGrad(() => (hParts.length === 1 ? hParts[0] : sum(concat(hParts, 0)).view([1])));
      return [noGrad(() => loss.view([1])), h];
    });
    losses.push(keep(loss));
    entropies.push(keep(h));
  }
  const total = (xs: Tensor[]) =>
    noGrad(() => {
      if (xs.length === 0) return keep(Tensor.zeros([1]));
      const s = xs.length === 1 ? xs[0].view([1]) : sum(concat(xs, 0));
      xs.forEach((x) => x.dispose());
      return keep(s);
    });
  return { loss: total(losses), entropySum: total(entropies), count };
}

const CHECKPOINT = "checkpoint";
const BEST = "best";

/** Trains `model` in place. With `resumeFrom`, optimizer and trainer state are restored from that checkpoint. */
export async function train(
  model: CausalLM,
  source: ExampleSource,
  options: Partial<TrainOptions>,
  hooks: TrainHooks = {},
  resumeFrom: string | null = null,
): Promise<TrainResult> {
  const o: TrainOptions = { ...DEFAULTS, ...options };
  const log = hooks.log ?? console.log;
  // finish a checkpoint swap a crash interrupted, and drop stale temp directories
  for (const name of [CHECKPOINT, BEST]) {
    const back = await recoverDirectory(`${o.outDir}/${name}`);
    if (back) log(`recovered ${o.outDir}/${name} from ${back} (a save was interrupted)`);
  }
  const tok = model.tokenizer;
  if (!tok) throw new Error("train: the model directory has no tokenizer.json");
  const eos = model.generation.eosTokenIds;
  const pad = model.generation.padTokenId ?? eos[0] ?? 0;
  const params = model.tensors();
  const opt = new AdamW(params, { lr: o.lr, weightDecay: o.weightDecay });
  const sampleRng = new Rng(o.seed + 1);
  let start = 0;
  let best: TrainResult["best"] = null;
  if (resumeFrom) {
    const state = JSON.parse(await Deno.readTextFile(`${resumeFrom}/trainer_state.json`));
    start = state.step;
    sampleRng.state = state.sampleRng;
    source.restore(state.source);
    best = state.best ?? null;
    const { tensors } = await readSafetensors(`${resumeFrom}/optimizer.safetensors`);
    opt.step = state.optimizerStep;
    params.forEach((_, i) => {
      for (const [kind, list] of [["m", opt.m], ["v", opt.v]] as const) {
        const raw = tensors.get(`${kind}.${i}`);
        if (!raw) throw new Error(`${resumeFrom}/optimizer.safetensors: missing ${kind}.${i}`);
        const t = keep(tensorFromRaw(raw));
        list[i].dispose();
        list[i] = t;
      }
    });
    log(`resumed from ${resumeFrom} at step ${start}`);
  }
  await Deno.mkdir(o.outDir, { recursive: true });
  const metricsPath = `${o.outDir}/metrics.jsonl`;
  // steps logged after the checkpoint a resumed run starts from are run again: drop them
  if (resumeFrom) await truncateMetrics(metricsPath, start);
  const history: StepMetrics[] = [];
  const evaluations: TrainResult["evaluations"] = [];
  let checkpoint: string | null = resumeFrom;

  const save = async (dir: string, step: number) => {
    await saveModel(model, dir, {
      metadata: { step: String(step), method: o.method },
      // a resumed run's model comes from its own checkpoint, which it may replace (atomically)
      replaceSource: resumeFrom !== null && dir === `${o.outDir}/${CHECKPOINT}`,
      extra: async (tmp) => {
        const state: Record<string, { dtype: "F32"; shape: number[]; data: Uint8Array }> = {};
        for (let i = 0; i < params.length; i++) {
          for (const [kind, t] of [["m", opt.m[i]], ["v", opt.v[i]]] as const) {
            const raw = await tensorToRaw(t);
            state[`${kind}.${i}`] = { dtype: "F32", shape: raw.shape, data: raw.data };
          }
        }
        await writeSafetensors(`${tmp}/optimizer.safetensors`, state);
        const trainerState = {
          step,
          optimizerStep: opt.step,
          sampleRng: sampleRng.state,
          source: source.state(),
          options: o,
          best,
        };
        await Deno.writeTextFile(
          `${tmp}/trainer_state.json`,
          JSON.stringify(trainerState, null, 2) + "\n",
        );
      },
    });
  };

  /** Returns true when the evaluation asks to stop (metrics.stop). */
  const runEval = async (step: number): Promise<boolean> => {
    if (!hooks.evaluate) return false;
    const metrics = await hooks.evaluate(model, step);
    evaluations.push({ step, metrics });
    await appendJsonl(metricsPath, { eval: true, step, ...metrics });
    log(
      `eval @ step ${step}: ${
        Object.entries(metrics).map(([k, v]) => `${k} ${fmt(v)}`).join("  ")
      }`,
    );
    if (metrics.score !== undefined && (best === null || metrics.score > best.score)) {
      best = { step, score: metrics.score, dir: `${o.outDir}/${BEST}` };
      await save(best.dir, step);
    }
    return metrics.stop === 1;
  };

  if (start === 0) await runEval(0);
  const t0 = performance.now();
  let last = start;
  try {
    for (let step = start + 1; step <= o.steps; step++) {
      await hooks.beforeStep?.(step, model);
      const stepStart = performance.now();
      const examples = source.next(o.batchSize);
      const lastGood = checkpoint
        ? `The last good checkpoint is ${checkpoint}.`
        : "No checkpoint was saved yet.";
      let batch: Batch;
      try {
        batch = await buildBatch(model, examples, o, sampleRng, pad, eos);
      } catch (e) {
        if (!(e instanceof NonFiniteLogitsError)) throw e;
        throw new DivergedError(
          `step ${step}: the model's logits are NaN or Inf while sampling (${e.message}); ` +
            `stopped before updating. ${lastGood}`,
        );
      }
      const lr = learningRate(o, step);
      opt.lr = lr;
      opt.zeroGrad();
      const acc = accumulateGradients(model, batch, o.method, o.reduce, o.microBatch);
      if (acc.count === 0) {
        throw new Error(`step ${step}: no response tokens to train on (max-new-tokens too small?)`);
      }
      const norm = clipGradNorm(params, o.clip);
      const [gradNorm, loss, hSum] = await Promise.all([
        norm.item(),
        acc.loss.item(),
        acc.entropySum.item(),
      ]);
      [norm, acc.loss, acc.entropySum].forEach((t) => t.dispose());
      const count = acc.count;
      if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
        opt.zeroGrad();
        throw new DivergedError(
          `step ${step}: the ${Number.isFinite(loss) ? "gradient norm" : "loss"} is ${
            Number.isFinite(loss) ? gradNorm : loss
          }; stopped before updating. ${lastGood}`,
        );
      }
      opt.update();
      opt.zeroGrad();
      last = step;
      const seconds = (performance.now() - stepStart) / 1000;
      const tokens = batch.mask.reduce((a, b) => a + b, 0);
      const metrics: StepMetrics = {
        step,
        loss,
        entropy: hSum / count,
        gradNorm,
        lr,
        tokens,
        tokensPerSecond: tokens / seconds,
        seconds,
      };
      history.push(metrics);
      await appendJsonl(metricsPath, metrics);
      const elapsed = (performance.now() - t0) / 1000;
      const eta = (elapsed / (step - start)) * (o.steps - step);
      log(
        `step ${step}/${o.steps}  loss ${fmt(loss)}  entropy ${fmt(metrics.entropy)}  |g| ${
          fmt(gradNorm)
        }  lr ${lr.toExponential(2)}  ${metrics.tokensPerSecond.toFixed(0)} tok/s  elapsed ${
          elapsed.toFixed(0)
        }s  eta ${eta.toFixed(0)}s`,
      );
      if (o.saveEvery > 0 && step % o.saveEvery === 0 && step < o.steps) {
        checkpoint = `${o.outDir}/${CHECKPOINT}`;
        await save(checkpoint, step);
      }
      if (o.evalEvery > 0 && step % o.evalEvery === 0 && step < o.steps && await runEval(step)) {
        log(`step ${step}: the evaluation target is reached; stopping early`);
        break;
      }
    }
    if (last > start) {
      if (last === o.steps) await runEval(last);
      checkpoint = `${o.outDir}/${CHECKPOINT}`;
      await save(checkpoint, last);
    }
  } finally {
    opt.dispose();
  }
  return { lastStep: last, history, evaluations, checkpoint, best };
}

/** The step's sequences: prompts with sampled responses (EM-FT) or with their answers (SFT). */
async function buildBatch(
  model: CausalLM,
  examples: Example[],
  o: TrainOptions,
  rng: Rng,
  pad: number,
  eos: number[],
): Promise<Batch> {
  const tok = model.tokenizer!;
  const prompts = examples.map((e) => encodePrompt(tok, e.prompt, o.chat));
  prompts.forEach((p, i) =>
    checkExampleFits(examples[i], p, 0, model.config.maxPositionEmbeddings)
  );
  const vocab = model.config.vocabSize;
  for (const p of prompts) {
    const bad = p.find((id) => id >= vocab);
    if (bad !== undefined) {
      throw new Error(
        `the tokenizer produced id ${bad} but the model's vocab_size is ${vocab}: model and data do not match`,
      );
    }
  }
  if (o.method === "sft") {
    const responses = examples.map((e) => {
      if (e.answer === undefined) {
        throw new Error(
          `SFT needs an "answer" for every example (prompt ${JSON.stringify(e.prompt)})`,
        );
      }
      return [...tok.encode(e.answer), ...(eos.length ? [eos[0]] : [])];
    });
    return packSequences(prompts, responses, pad);
  }
  const repeated = prompts.flatMap((p) => Array.from({ length: o.nSamples }, () => p));
  const r = await generate(model, repeated, {
    maxNewTokens: o.maxNewTokens,
    temperature: o.temperature,
    topP: o.topP,
    seed: Math.floor(rng.next() * 2 ** 31),
    eosTokenIds: eos,
    padTokenId: pad,
  });
  return packSequences(repeated, r.tokens, pad);
}

/** Keeps the metrics.jsonl records of steps <= `step`. */
async function truncateMetrics(path: string, step: number): Promise<void> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    return;
  }
  const kept = text.split("\n").filter((line) => {
    if (!line.trim()) return false;
    try {
      return (JSON.parse(line).step ?? 0) <= step;
    } catch {
      return false;
    }
  });
  await atomicWrite(path, async (f) => {
    await f.write(new TextEncoder().encode(kept.map((l) => l + "\n").join("")));
  });
}

async function appendJsonl(path: string, value: unknown): Promise<void> {
  await Deno.writeTextFile(path, JSON.stringify(value) + "\n", { append: true });
}

function fmt(v: number): string {
  return Math.abs(v) >= 100 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : v.toFixed(4);
}
