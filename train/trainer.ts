/**
 * One training loop for every method (nanoGPT-style: defaults up top, a flat
 * loop that never asks which loss it is). What differs between EM-FT, SFT and
 * EM-RL lives behind the Objective interface (objective.ts): how a step's
 * batch is made and the loss at each scored position. Each step: make the
 * batch (rollouts, rewards, advantages, reference log-probs), then for each of
 * the objective's updates accumulate the gradient over micro-batches so the
 * batch is not limited by memory, clip, schedule the learning rate, AdamW.
 * Metrics go to metrics.jsonl; checkpoints (HF format + optimizer + trainer
 * state) are written atomically and resumable.
 * @module
 */
import {
  atomicWrite,
  recoverDirectory,
  replaceDirectory,
  tempDirectoryBeside,
} from "../engine/atomic.ts";
import { loadModel, saveModel } from "../engine/model/checkpoint.ts";
import { type CausalLM } from "../engine/model/causal_lm.ts";
import { type DecoderLM } from "../engine/model/decoder.ts";
import { frozenCopy } from "../engine/model/init.ts";
import type { LoraTarget } from "../engine/model/lora.ts";
import { concat, entropy, mulScalar, sum } from "../engine/ops/mod.ts";
import { device } from "../engine/device.ts";
import { AdamW, clipGradNorm } from "../engine/optim.ts";
import { Rng } from "../engine/random.ts";
import { readSafetensors, writeSafetensors } from "../engine/safetensors.ts";
import { tensorFromRaw, tensorToRaw } from "../engine/tensor_io.ts";
import { keep, noGrad, tidy } from "../engine/scope.ts";
import { Tensor } from "../engine/tensor.ts";
import { NonFiniteLogitsError } from "../infer/generate.ts";
import type { ExampleSource } from "./data.ts";
import { emFtObjective, type Reduce } from "./em_ft.ts";
import { emRlObjective, type Estimator } from "./em_rl.ts";
import type { BatchContext, Objective, StepBatch } from "./objective.ts";
import type { RewardName, RewardReduce } from "./rewards.ts";
import { sftObjective } from "./sft.ts";

export { packSequences } from "./objective.ts";
export type { Batch } from "./objective.ts";

export type Method = "em-ft" | "sft" | "em-rl";
export type Schedule = "constant" | "cosine";

export interface TrainOptions {
  method: Method;
  steps: number;
  /** Prompts per optimizer step. */
  batchSize: number;
  /** EM-FT and EM-RL: responses sampled per prompt. */
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
  /** Activation recomputation: keep only each layer's input, recompute the layer in backward. */
  recompute: boolean;
  /** LoRA (CLI): rank (0 = full fine-tuning), alpha, target layers. */
  loraRank: number;
  loraAlpha: number;
  loraTargets: LoraTarget[];
  /** Stop when an evaluation's score falls below this fraction of the best so far (0 = off). */
  stopOnCollapse: number;
  chat: boolean;
  outDir: string;
  /** EM-RL: the reward (rewards.ts) and how it reduces over tokens. */
  reward: RewardName;
  rewardReduce: RewardReduce;
  /** EM-RL: advantage estimator. */
  estimator: Estimator;
  /** EM-RL: PPO clip epsilon, passes per batch, prompts per update (0 = all). */
  clipRatio: number;
  ppoEpochs: number;
  ppoMiniBatch: number;
  /** EM-RL: weight of the k3 KL to the initial model (0: no reference is allocated). */
  klCoef: number;
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
  recompute: false,
  loraRank: 0,
  loraAlpha: 0,
  loraTargets: ["q", "k", "v", "o", "gate", "up", "down"],
  stopOnCollapse: 0,
  chat: false,
  outDir: "runs/em-ft",
  reward: "token",
  rewardReduce: "mean",
  estimator: "rloo",
  clipRatio: 0.2,
  ppoEpochs: 1,
  ppoMiniBatch: 0,
  klCoef: 0.001,
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
  /** Seconds making the batch (sampling, no-grad passes) and sampled tokens per second. */
  rolloutSeconds: number;
  rolloutTokensPerSecond: number;
  /** Seconds in forward/backward/optimizer updates and trained tokens per second. */
  updateSeconds: number;
  updateTokensPerSecond: number;
  [key: string]: number;
}

export interface TrainHooks {
  log?: (line: string) => void;
  /** Evaluation at step 0, every evalEvery steps and at the end; `score` (higher is better) picks the best checkpoint. */
  evaluate?: (model: CausalLM, step: number) => Promise<Record<string, number>>;
  /** Called before each step (tests inject faults here). */
  beforeStep?: (step: number, model: CausalLM) => void | Promise<void>;
  /** Train with this objective instead of the one `method` names (a library user's own). */
  objective?: Objective;
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

/** The sums a gradient pass measured (GPU scalars) and how many positions it scored. */
export interface Accumulated {
  loss: Tensor;
  /** Sums over the scored positions: entropy and the objective's statistics. */
  stats: Record<string, Tensor>;
  count: number;
}

/**
 * Forward and backward over `rows` of `batch` (default all) in micro-batches,
 * accumulating into the parameters' .grad exactly the gradient of the loss of
 * those rows together: each micro-batch's loss is divided by the divisor of
 * them all (their scored positions for "tokens", their rows for "sequences").
 */
export function accumulateGradients(
  model: CausalLM,
  batch: StepBatch,
  objective: Objective,
  microBatch: number,
  rows: number[] = Array.from({ length: batch.rows }, (_, i) => i),
  recompute = false,
): Accumulated {
  const T = batch.length;
  // scored positions are row-major: each row's are one run of batch.positions
  const first = new Array(batch.rows + 1).fill(batch.positions.length);
  for (let i = batch.positions.length - 1; i >= 0; i--) {
    first[Math.floor(batch.positions[i] / T)] = i;
  }
  for (let r = batch.rows - 1; r >= 0; r--) first[r] = Math.min(first[r], first[r + 1]);
  const count = rows.reduce((s, r) => s + first[r + 1] - first[r], 0);
  const divisor = objective.normalizer === "tokens" ? Math.max(count, 1) : rows.length;
  const losses: Tensor[] = [];
  const parts: Record<string, Tensor[]> = {};
  for (let m0 = 0; m0 < rows.length; m0 += microBatch) {
    const micro = rows.slice(m0, m0 + microBatch);
    const ids = micro.flatMap((r) => batch.ids.slice(r * T, (r + 1) * T));
    const mask = micro.flatMap((r) => batch.mask.slice(r * T, (r + 1) * T));
    // the micro-batch's scored positions: local flat indices and indices into batch.positions
    const at: number[] = [];
    const which: number[] = [];
    micro.forEach((r, k) => {
      for (let i = first[r]; i < first[r + 1]; i++) {
        at.push(batch.positions[i] - r * T + k * T);
        which.push(i);
      }
    });
    if (at.length === 0) continue;
    const [loss, sums] = tidy(() => {
      const hidden = model.hidden(Tensor.from(ids, [micro.length, T], { dtype: "i32" }), {
        attentionMask: mask,
        recompute,
      });
      const chunkSums: Record<string, Tensor[]> = {};
      const loss = model.headAt(hidden, at, (logits, from, to) => {
        const idx = which.slice(from, to);
        const n = to - from;
        const data = Object.fromEntries(
          Object.entries(batch.data).map(([k, v]) => [k, Tensor.from(idx.map((i) => v[i]), [n])]),
        );
        const targets = Tensor.from(idx.map((i) => batch.targets[i]), [n], { dtype: "i32" });
        const out = objective.positionLoss({ logits, targets, data });
        const stats = { ...out.stats };
        stats.entropy ??= noGrad(() => entropy(logits));
        for (const [k, v] of Object.entries(stats)) {
          (chunkSums[k] ??= []).push(noGrad(() => sum(v).view([1])));
        }
        return mulScalar(sum(out.loss), 1 / divisor);
      });
      loss.backward();
      const sums = Object.fromEntries(
        Object.entries(chunkSums).map((
          [k, xs],
        ) => [k, noGrad(() => (xs.length === 1 ? xs[0] : sum(concat(xs, 0)).view([1])))]),
      );
      return [noGrad(() => loss.view([1])), sums] as const;
    });
    losses.push(keep(loss));
    for (const [k, v] of Object.entries(sums)) (parts[k] ??= []).push(keep(v));
  }
  const total = (xs: Tensor[]) =>
    noGrad(() => {
      if (xs.length === 0) return keep(Tensor.zeros([1]));
      const s = xs.length === 1 ? xs[0].view([1]) : sum(concat(xs, 0));
      xs.forEach((x) => x.dispose());
      return keep(s);
    });
  const stats = Object.fromEntries(Object.entries(parts).map(([k, xs]) => [k, total(xs)]));
  return { loss: total(losses), stats, count };
}

/** The objective `o.method` names. */
export function objectiveFor(o: TrainOptions, reference: CausalLM | null): Objective {
  switch (o.method) {
    case "em-ft":
      return emFtObjective({ nSamples: o.nSamples, reduce: o.reduce });
    case "sft":
      return sftObjective();
    case "em-rl":
      return emRlObjective({ ...o, reference });
  }
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
  const state = resumeFrom
    ? JSON.parse(await Deno.readTextFile(`${resumeFrom}/trainer_state.json`))
    : null;
  // EM-RL's reference: the initial weights, frozen (a copy, or reloaded from where they came from)
  let reference: CausalLM | null = null;
  let referenceDir: string | null = state?.referenceDir ?? model.sourceDir;
  if (!hooks.objective && o.method === "em-rl" && o.klCoef > 0 && model.adapters) {
    // with LoRA the reference is the base itself: the same buffers with the adapters off
    reference = (model as DecoderLM).base();
  } else if (!hooks.objective && o.method === "em-rl" && o.klCoef > 0) {
    if (!resumeFrom) reference = frozenCopy(model);
    else if (!referenceDir) {
      throw new Error(
        `${resumeFrom}: the reference model's directory is not recorded; cannot resume EM-RL`,
      );
    } else reference = await loadModel(referenceDir, { dtype: "f32", checkFinite: false });
  }
  if (!resumeFrom) referenceDir = model.sourceDir;
  const objective = hooks.objective ?? objectiveFor(o, reference);
  const eos = model.generation.eosTokenIds;
  const pad = model.generation.padTokenId ?? eos[0] ?? 0;
  const params = model.trainable();
  // with LoRA, checkpoints hold the adapters (PEFT format) and name the base they adapt
  const loraBase: string | null = state?.loraBase ?? model.sourceDir;
  const opt = new AdamW(params, { lr: o.lr, weightDecay: o.weightDecay });
  const sampleRng = new Rng(o.seed + 1);
  let start = 0;
  let best: TrainResult["best"] = null;
  if (resumeFrom) {
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
    const extra = async (tmp: string) => {
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
        referenceDir,
        loraBase: model.adapters ? loraBase : null,
      };
      await Deno.writeTextFile(
        `${tmp}/trainer_state.json`,
        JSON.stringify(trainerState, null, 2) + "\n",
      );
    };
    if (model.adapters) {
      const tmp = await tempDirectoryBeside(dir);
      await model.adapters.save(tmp, loraBase);
      await extra(tmp);
      await replaceDirectory(tmp, dir);
      return;
    }
    await saveModel(model, dir, {
      metadata: { step: String(step), method: o.method },
      // a resumed run's model comes from its own checkpoint, which it may replace (atomically)
      replaceSource: resumeFrom !== null && dir === `${o.outDir}/${CHECKPOINT}`,
      extra,
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
    if (
      o.stopOnCollapse > 0 && best && metrics.score !== undefined &&
      metrics.score < o.stopOnCollapse * best.score
    ) {
      log(
        `eval @ step ${step}: score ${
          fmt(metrics.score)
        } fell below ${o.stopOnCollapse} of its best ` +
          `${fmt(best.score)} (step ${best.step}): stopping; the best checkpoint is ${best.dir}`,
      );
      return true;
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
      const dev = device();
      const liveAtStart = dev.liveBytes;
      dev.resetPeak();
      const examples = source.next(o.batchSize);
      const lastGood = checkpoint
        ? `The last good checkpoint is ${checkpoint}.`
        : "No checkpoint was saved yet.";
      const ctx: BatchContext = {
        model,
        rng: sampleRng,
        pad,
        eos,
        chat: o.chat,
        maxNewTokens: o.maxNewTokens,
        temperature: o.temperature,
        topP: o.topP,
        microBatch: o.microBatch,
      };
      let batch: StepBatch;
      try {
        batch = await objective.makeBatch(ctx, examples);
      } catch (e) {
        if (!(e instanceof NonFiniteLogitsError)) throw e;
        throw new DivergedError(
          `step ${step}: the model's logits are NaN or Inf while sampling (${e.message}); ` +
            `stopped before updating. ${lastGood}`,
        );
      }
      const rolloutSeconds = (performance.now() - stepStart) / 1000;
      const rolloutPeak = dev.peakLiveBytes - liveAtStart; // KV cache + rollout activations
      const liveAtUpdate = dev.liveBytes;
      dev.resetPeak();
      const lr = learningRate(o, step);
      const updates = objective.updates?.(batch) ??
        [Array.from({ length: batch.rows }, (_, i) => i)];
      let lossSum = 0;
      let gradNormSum = 0;
      let positions = 0;
      let trained = 0;
      const statSums: Record<string, number> = {};
      for (const rows of updates) {
        opt.lr = lr;
        opt.zeroGrad();
        const acc = accumulateGradients(model, batch, objective, o.microBatch, rows, o.recompute);
        if (acc.count === 0) {
          throw new Error(
            `step ${step}: no response tokens to train on (max-new-tokens too small?)`,
          );
        }
        const norm = clipGradNorm(params, o.clip);
        const names = Object.keys(acc.stats);
        const [gradNorm, loss, ...sums] = await Promise.all([
          norm.item(),
          acc.loss.item(),
          ...names.map((k) => acc.stats[k].item()),
        ]);
        [norm, acc.loss, ...Object.values(acc.stats)].forEach((t) => t.dispose());
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
        lossSum += loss;
        gradNormSum += gradNorm;
        positions += acc.count;
        names.forEach((k, i) => statSums[k] = (statSums[k] ?? 0) + sums[i]);
        trained += rows.reduce((t, r) => t + sumOf(batch.mask, r * batch.length, batch.length), 0);
      }
      last = step;
      const memory = {
        weightBytes: bytesOf(model.tensors()),
        adapterBytes: model.adapters ? bytesOf(params) : 0,
        optimizerBytes: bytesOf([...opt.m, ...opt.v]),
        // with LoRA the reference is the base's own buffers: nothing extra
        referenceBytes: reference && !model.adapters ? bytesOf(reference.tensors()) : 0,
        rolloutPeakBytes: rolloutPeak,
        // gradients (one f32 per parameter) and activations kept for backward, at their peak
        updatePeakBytes: dev.peakLiveBytes - liveAtUpdate,
        gradientBytes: params.reduce((n, p) => n + 4 * p.size, 0),
        pooledBytes: dev.pooledBytes,
        rssBytes: Deno.memoryUsage().rss,
      };
      const seconds = (performance.now() - stepStart) / 1000;
      const updateSeconds = seconds - rolloutSeconds;
      const tokens = sumOf(batch.mask, 0, batch.mask.length);
      const { entropy: hSum, ...stats } = statSums;
      const metrics: StepMetrics = {
        step,
        loss: lossSum / updates.length,
        entropy: hSum / positions,
        gradNorm: gradNormSum / updates.length,
        lr,
        tokens,
        tokensPerSecond: tokens / seconds,
        seconds,
        rolloutSeconds,
        rolloutTokensPerSecond: batch.sampledTokens / rolloutSeconds,
        updateSeconds,
        updateTokensPerSecond: trained / updateSeconds,
        ...batch.metrics,
        ...memory,
        ...Object.fromEntries(Object.entries(stats).map(([k, v]) => [k, v / positions])),
      };
      history.push(metrics);
      await appendJsonl(metricsPath, metrics);
      const elapsed = (performance.now() - t0) / 1000;
      const eta = (elapsed / (step - start)) * (o.steps - step);
      const extra = ["reward", "kl", "clipFraction", "responseLength"]
        .filter((k) => metrics[k] !== undefined)
        .map((k) => `${SHORT[k] ?? k} ${fmt(metrics[k])}`).join("  ");
      log(
        `step ${step}/${o.steps}  loss ${fmt(metrics.loss)}  entropy ${fmt(metrics.entropy)}  |g| ${
          fmt(metrics.gradNorm)
        }  lr ${lr.toExponential(2)}${extra ? "  " + extra : ""}  rollout ${
          rolloutSeconds.toFixed(1)
        }s (${metrics.rolloutTokensPerSecond.toFixed(0)} tok/s)  update ${
          updateSeconds.toFixed(1)
        }s (${metrics.updateTokensPerSecond.toFixed(0)} tok/s)  elapsed ${
          elapsed.toFixed(0)
        }s  eta ${eta.toFixed(0)}s`,
      );
      if (step === start + 1 || step === o.steps) log(memoryLine(step, memory));
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
    reference?.dispose();
  }
  return { lastStep: last, history, evaluations, checkpoint, best };
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

function bytesOf(ts: Tensor[]): number {
  return ts.reduce((n, t) => n + t.buffer.size, 0);
}

/** GPU memory by category, and the process's RSS. */
function memoryLine(step: number, m: Record<string, number>): string {
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  return `memory @ step ${step}: weights ${mib(m.weightBytes)}${
    m.adapterBytes ? ` (+ LoRA adapters ${mib(m.adapterBytes)})` : ""
  }, optimizer state ${mib(m.optimizerBytes)}${
    m.referenceBytes ? `, reference ${mib(m.referenceBytes)}` : ""
  }, rollouts (KV cache + activations) peak ${mib(m.rolloutPeakBytes)}, update peak ${
    mib(m.updatePeakBytes)
  } (gradients ${mib(m.gradientBytes)} + activations ${
    mib(Math.max(0, m.updatePeakBytes - m.gradientBytes))
  }); pool ${mib(m.pooledBytes)}; process RSS ${mib(m.rssBytes)}`;
}

/** Short names in the progress line. */
const SHORT: Record<string, string> = { clipFraction: "clip", responseLength: "len" };

function sumOf(xs: number[], from: number, n: number): number {
  let s = 0;
  for (let i = from; i < from + n; i++) s += xs[i];
  return s;
}

function fmt(v: number): string {
  return Math.abs(v) >= 100 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : v.toFixed(4);
}
