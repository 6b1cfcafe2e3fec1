/**
 * One training loop for every method (nanoGPT-style: a flat loop that never
 * asks which loss it runs). The method's Objective (objective.ts) makes each
 * step's batch and says the loss at each scored position; the loop
 * accumulates the gradient over micro-batches for each of the objective's
 * updates, clips, schedules the learning rate and steps AdamW. It logs
 * metrics.jsonl, evaluates through a hook (keeping the best checkpoint and
 * stopping on collapse), and saves resumable checkpoints (run_state.ts).
 * @module
 */
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { device } from "../engine/device.ts";
import { AdamW } from "../engine/optim.ts";
import { loadOptimizer } from "../engine/optim_files.ts";
import { Rng } from "../engine/random.ts";
import { writeRunReport } from "../report/run_report.ts";
import type { ExampleSource } from "./data.ts";
import { METHODS } from "./methods.ts";
import type { Objective, StepBatch } from "./objective.ts";
import {
  batchContext,
  bytesOf,
  compareRollouts,
  DivergedError,
  makeBatch,
  prefetch,
  type Prefetched,
  sumOf,
  update,
} from "./step.ts";

export { DivergedError };
import type { Sampler } from "../infer/sampler.ts";
import { DEFAULTS, learningRate, type TrainOptions } from "./options.ts";
import { evalLine, fmt, memoryLine, progressLine } from "./progress.ts";
import {
  appendJsonl,
  BEST,
  type Best,
  CHECKPOINT,
  readRunState,
  recoverRun,
  type RunState,
  saveCheckpoint,
  truncateMetrics,
} from "./run_state.ts";

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
  /** Also, with rollout servers: syncSeconds (weights sent), mismatchAbsLogp, mismatchKl, tisCapped. */
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
  /** Asked after each step: true saves a checkpoint and returns (an interrupt). */
  shouldStop?: () => boolean;
  /** Saved with each checkpoint in trainer_state.json's `record` (the CLI's own settings). */
  record?: Record<string, unknown>;
  /**
   * Where rollouts are sampled (default: this process's model), e.g. inference
   * servers (RolloutServers.sampler). Log-probs it reports are compared with
   * the trainer's (mismatch metrics) and enable tisCap and asyncRollouts.
   */
  sampler?: Sampler;
  /** After each step's update (before its save and evaluation): e.g. the weights sent to the servers. */
  afterUpdate?: (model: CausalLM, step: number) => Promise<void>;
}

export interface TrainResult {
  lastStep: number;
  history: StepMetrics[];
  evaluations: { step: number; metrics: Record<string, number> }[];
  checkpoint: string | null;
  best: Best | null;
  /** `shouldStop` ended the run early (its checkpoint is saved). */
  interrupted: boolean;
}

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
  if ((o.asyncRollouts || o.tisCap > 0) && !hooks.sampler) {
    throw new Error(
      `train: ${
        o.asyncRollouts ? "asyncRollouts" : "tisCap"
      } needs rollouts from a sampler that reports log-probs (hooks.sampler, e.g. inference servers)`,
    );
  }
  if (o.tisCap > 0 && !hooks.objective && o.method !== "em-rl") {
    throw new Error(
      `train: tisCap weights EM-RL's policy gradient; ${o.method}'s loss does not depend on which token was sampled`,
    );
  }
  await recoverRun(o.outDir, log);
  if (!model.tokenizer) throw new Error("train: the model directory has no tokenizer.json");
  const resumed: RunState | null = resumeFrom ? await readRunState(resumeFrom) : null;
  const initialModelDir = resumed ? resumed.referenceDir : model.sourceDir;
  const objective = hooks.objective ??
    await METHODS[o.method].objective({ model, options: o, initialModelDir, resumed: !!resumed });
  const params = model.trainable();
  const opt = new AdamW(params, { lr: o.lr, weightDecay: o.weightDecay });
  const sampleRng = new Rng(o.seed + 1);
  // with LoRA, checkpoints hold the adapters (PEFT format) and name the base they adapt
  const loraBase = model.adapters ? resumed?.loraBase ?? model.sourceDir : null;
  let start = 0;
  let best: Best | null = null;
  const metricsPath = `${o.outDir}/metrics.jsonl`;
  try {
    if (resumed) {
      start = resumed.step;
      sampleRng.state = resumed.sampleRng;
      source.restore(resumed.source);
      best = resumed.best ?? null;
      await loadOptimizer(opt, `${resumeFrom}/optimizer.safetensors`, resumed.optimizerStep);
      log(`resumed from ${resumeFrom} at step ${start}`);
    }
    await Deno.mkdir(o.outDir, { recursive: true });
    // steps logged after the checkpoint a resumed run starts from are run again: drop them
    if (resumed) await truncateMetrics(metricsPath, start);
  } catch (e) {
    opt.dispose();
    objective.dispose?.();
    throw e;
  }
  const history: StepMetrics[] = [];
  const evaluations: TrainResult["evaluations"] = [];
  let checkpoint: string | null = resumeFrom;

  // where a resumed run continues drawing prompts and seeds: after this step's batch (with
  // asyncRollouts the next batch is already drawn, so the state is taken before it)
  let resumePoint = { source: source.state(), sampleRng: sampleRng.state };
  const save = (dir: string, step: number) =>
    saveCheckpoint(dir, {
      model,
      optimizer: opt,
      state: {
        step,
        optimizerStep: opt.step,
        sampleRng: resumePoint.sampleRng,
        source: resumePoint.source,
        options: o,
        best,
        referenceDir: initialModelDir,
        loraBase,
        data: source.describe?.(),
        record: hooks.record,
      },
      // a resumed run's model comes from its own checkpoint, which it may replace (atomically)
      replaceSource: resumeFrom !== null && dir === `${o.outDir}/${CHECKPOINT}`,
    });

  /** Returns true when the evaluation asks to stop (metrics.stop, or a collapse). */
  const runEval = async (step: number): Promise<boolean> => {
    if (!hooks.evaluate) return false;
    const metrics = await hooks.evaluate(model, step);
    evaluations.push({ step, metrics });
    await appendJsonl(metricsPath, { eval: true, step, ...metrics });
    log(evalLine(step, metrics));
    if (metrics.score !== undefined && (best === null || metrics.score > best.score)) {
      best = { step, score: metrics.score, dir: `${o.outDir}/${BEST}` };
      await save(best.dir, step);
    }
    if (
      o.stopOnCollapse > 0 && best && metrics.score !== undefined &&
      metrics.score < o.stopOnCollapse * best.score
    ) {
      log(
        `eval @ step ${step}: score ${fmt(metrics.score)} fell below ${o.stopOnCollapse} of its ` +
          `best ${
            fmt(best.score)
          } (step ${best.step}): stopping; the best checkpoint is ${best.dir}`,
      );
      await appendJsonl(metricsPath, { stop: "collapse", step, score: metrics.score });
      return true;
    }
    if (metrics.stop === 1) await appendJsonl(metricsPath, { stop: "target", step });
    return metrics.stop === 1;
  };
  /**
   * OUT/report.html, rewritten with each checkpoint, at the end, and when the run fails (up to
   * its last logged step); a failure to write it costs the report, not the run.
   */
  const report = async () => {
    try {
      await writeRunReport([o.outDir], `${o.outDir}/report.html`);
    } catch (e) {
      log(`report: ${(e as Error).message} (training goes on)`);
    }
  };

  if (start === 0) await runEval(0);
  const t0 = performance.now();
  let last = start;
  let interrupted = false;
  let next: Prefetched | null = null;
  try {
    for (let step = start + 1; step <= o.steps; step++) {
      await hooks.beforeStep?.(step, model);
      const lastGood = checkpoint
        ? `The last good checkpoint is ${checkpoint}.`
        : "No checkpoint was saved yet.";
      const dev = device();
      const stepStart = performance.now();
      const liveAtStart = dev.liveBytes;
      dev.resetPeak();
      const ctx = batchContext(model, o, sampleRng, hooks.sampler);
      let batch: StepBatch;
      if (next) {
        next.release(); // the weights it is scored with are this step's
        batch = await next.batch;
        next = null;
      } else batch = await makeBatch(objective, ctx, source, o, { step, lastGood });
      resumePoint = { source: source.state(), sampleRng: sampleRng.state };
      if (o.asyncRollouts && step < o.steps) {
        next = prefetch(
          ctx,
          (c) => makeBatch(objective, c, source, o, { step: step + 1, lastGood }),
        );
      }
      await compareRollouts(model, batch, o);
      const rolloutSeconds = (performance.now() - stepStart) / 1000;
      const rolloutPeak = dev.peakLiveBytes - liveAtStart; // KV cache + rollout activations
      const liveAtUpdate = dev.liveBytes;
      dev.resetPeak();
      const lr = learningRate(o, step);
      const u = await update(model, batch, objective, opt, { ...o, lr, step, lastGood });
      const syncStart = performance.now();
      await hooks.afterUpdate?.(model, step);
      const syncSeconds = (performance.now() - syncStart) / 1000;
      last = step;
      const own = objective.memory?.() ?? {};
      const memory = {
        weightBytes: bytesOf(model.tensors()),
        adapterBytes: model.adapters ? bytesOf(params) : 0,
        optimizerBytes: bytesOf([...opt.m, ...opt.v]),
        ...own,
        rolloutPeakBytes: rolloutPeak,
        // gradients (one f32 per parameter) and activations kept for backward, at their peak
        updatePeakBytes: dev.peakLiveBytes - liveAtUpdate,
        gradientBytes: params.reduce((n, p) => n + 4 * p.size, 0),
        pooledBytes: dev.pooledBytes,
        rssBytes: Deno.memoryUsage().rss,
      };
      const seconds = (performance.now() - stepStart) / 1000;
      const updateSeconds = seconds - rolloutSeconds - syncSeconds;
      const tokens = sumOf(batch.mask, 0, batch.mask.length);
      const metrics: StepMetrics = {
        step,
        loss: u.loss,
        entropy: u.entropy,
        gradNorm: u.gradNorm,
        lr,
        tokens,
        tokensPerSecond: tokens / seconds,
        seconds,
        rolloutSeconds,
        rolloutTokensPerSecond: batch.sampledTokens / rolloutSeconds,
        updateSeconds,
        updateTokensPerSecond: u.trainedTokens / updateSeconds,
        ...(hooks.afterUpdate ? { syncSeconds } : {}),
        ...batch.metrics,
        ...memory,
        ...u.stats,
      };
      history.push(metrics);
      await appendJsonl(metricsPath, metrics);
      const elapsed = (performance.now() - t0) / 1000;
      const eta = (elapsed / (step - start)) * (o.steps - step);
      log(progressLine(metrics, { steps: o.steps, shown: objective.progress ?? {}, elapsed, eta }));
      if (step === start + 1 || step === o.steps) log(memoryLine(step, memory, own));
      if (o.saveEvery > 0 && step % o.saveEvery === 0 && step < o.steps) {
        checkpoint = `${o.outDir}/${CHECKPOINT}`;
        await save(checkpoint, step);
        await report();
      }
      if (o.evalEvery > 0 && step % o.evalEvery === 0 && step < o.steps && await runEval(step)) {
        log(`step ${step}: the evaluation target is reached; stopping early`);
        break;
      }
      if (step < o.steps && hooks.shouldStop?.()) {
        interrupted = true;
        break;
      }
    }
    if (last > start) {
      if (last === o.steps && !interrupted) await runEval(last);
      checkpoint = `${o.outDir}/${CHECKPOINT}`;
      await save(checkpoint, last);
      await report();
    }
  } catch (e) {
    if (history.length) await report(); // a diverged or crashed run: what it logged
    throw e;
  } finally {
    (next as Prefetched | null)?.abort(); // rollouts drawn for a step that will not run
    opt.dispose();
    objective.dispose?.();
  }
  return { lastStep: last, history, evaluations, checkpoint, best, interrupted };
}
