/**
 * `deno task train`: EM-FT, EM-RL or SFT of a Qwen checkpoint. With no
 * arguments, the embedded demo: EM-FT (or `--method em-rl`) of the shipped
 * arithmetic model on unlabeled prompts from the task generator, with a
 * before/after table on held-out problems. One trainer per output directory;
 * an interrupt saves a checkpoint that --resume continues bit for bit.
 * @module
 */
import { is, numberFlag, type ParsedArgs } from "@std/cli";
import { recoverDirectory } from "../engine/atomic.ts";
import { initDeviceOrExplain } from "../engine/device.ts";
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { adapterBase, readConfig, saveModel } from "../engine/model/checkpoint.ts";
import { parseQuantizationConfig } from "../engine/quant/checkpoints.ts";
import { exists } from "../engine/paths.ts";
import { type DemoScores, evaluateDemo } from "../demo/evaluate.ts";
import { DEMO_HELD_OUT, DEMO_MODEL, DEMO_PROMPT_LENGTH, heldOutProblems } from "../demo/task.ts";
import { demoTable, demoValidation } from "../demo/training.ts";
import { HELP, parseTrainFlags } from "./cli_flags.ts";
import { type CliRecord, resumeData, resumeOptions } from "./cli_resume.ts";
import { connectRolloutServers, loadRunData, loadRunModel, loraProblem } from "./cli_setup.ts";
import { RolloutError, type RolloutServers } from "./rollout_servers.ts";
import type { ExampleSource } from "./data.ts";
import { dryRunReport, memoryRefusal, planMemory } from "./memory.ts";
import { METHODS } from "./methods.ts";
import type { TrainOptions } from "./options.ts";
import { prepareOutDir, type RunLock } from "./run_dir.ts";
import { CHECKPOINT, readRunState, type RunState } from "./run_state.ts";
import { DivergedError, train, type TrainHooks } from "./trainer.ts";
import { checkEvalData, problemValidation, readEvalData } from "./validation.ts";

/** Exit status after an interrupt (128 + SIGINT). */
const INTERRUPTED = 130;

class UsageError extends Error {}

/**
 * Interrupts (SIGINT, SIGTERM): while training, the first finishes the step
 * and saves; a second exits at once (the last complete checkpoint stays:
 * saves swap in whole directories). Before training, one exits at once.
 */
const interrupts = { count: 0, training: false, lock: null as RunLock | null };

function onSignal(): void {
  if (++interrupts.count > 1 || !interrupts.training) {
    interrupts.lock?.releaseSync();
    Deno.exit(INTERRUPTED);
  }
  console.error("\ninterrupt: finishing this step, then saving (interrupt again to stop at once)");
}

export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseTrainFlags(args);
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n\nRun with --help for the flags.`);
    return 2;
  }
  if (parsed.flags.help) {
    console.log(HELP);
    return 0;
  }
  parsed.warnings.forEach((w) => console.error(`warning: ${w}`));
  const signals = (["SIGINT", "SIGTERM"] as const).filter((s) => {
    try {
      Deno.addSignalListener(s, onSignal);
      return true;
    } catch {
      return false; // SIGTERM is not a signal on Windows
    }
  });
  try {
    return await run(parsed, (l) => interrupts.lock = l);
  } catch (e) {
    // one line naming the file, field or flag; the stack only when asked for
    if (Deno.env.get("EM_DEBUG")) console.error(e);
    console.error(`error: ${(e as Error).message}`);
    return e instanceof UsageError ? 2 : 1;
  } finally {
    interrupts.lock?.releaseSync();
    signals.forEach((s) => Deno.removeSignalListener(s, onSignal));
  }
}

async function run(
  { options: parsedOptions, flags, demo: noModelOrData }: ReturnType<typeof parseTrainFlags>,
  held: (lock: RunLock) => void,
): Promise<number> {
  const resume = flags.resume === true;
  const modelFlag = typeof flags.model === "string" ? flags.model : null;
  let options = parsedOptions;
  let dataFile = typeof flags.data === "string" ? flags.data : null;
  let state: RunState | null = null;
  let record: CliRecord = { evalData: null, targetAccuracy: null };
  const out = options.outDir;
  const lockOut = async () => {
    try {
      held(await prepareOutDir(out, modelFlag, { resume, overwrite: flags.overwrite === true }));
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  };
  if (resume) {
    // the run continues as recorded: options, data and evaluation from its checkpoint
    await lockOut();
    const checkpointDir = `${out}/${CHECKPOINT}`;
    const back = await recoverDirectory(checkpointDir);
    if (back) console.log(`recovered ${checkpointDir} from ${back} (a save was interrupted)`);
    const statePath = `${checkpointDir}/trainer_state.json`;
    if (!await exists(statePath)) {
      throw new UsageError(`--resume: ${statePath} not found (no checkpoint to resume)`);
    }
    state = await readRunState(checkpointDir);
    try {
      const r = resumeOptions(state, flags, parsedOptions, statePath);
      // rollouts one step ahead are a property of where this process samples, not of the run
      options = { ...r.options, asyncRollouts: flags["async-rollouts"] === true };
      if (r.changes.length) console.log(`resuming with ${r.changes.join(", ")}`);
      dataFile = await resumeData(state, dataFile, statePath);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    record = { ...record, ...(state.record as Partial<CliRecord> ?? {}) };
    if (state.step >= options.steps) {
      console.log(
        `${out}: the run already reached step ${state.step} of ${options.steps}; nothing to do (pass --steps N above ${state.step} to extend it)`,
      );
      return 0;
    }
  }
  const evalFlag = typeof flags["eval-data"] === "string" ? flags["eval-data"] : null;
  const evalPath = evalFlag ?? record.evalData?.path ?? null;
  const target = flags["target-accuracy"] !== undefined
    ? Number(flags["target-accuracy"])
    : record.targetAccuracy;
  record = { evalData: null, targetAccuracy: target };
  // the memory an update needs, from config.json alone: printed by --dry-run, checked before loading
  const configDir = resume
    ? (await exists(`${out}/${CHECKPOINT}/config.json`)
      ? `${out}/${CHECKPOINT}`
      : await adapterBase(`${out}/${CHECKPOINT}`))
    : modelFlag !== null && !await exists(`${modelFlag}/config.json`) &&
        await exists(`${modelFlag}/adapter_config.json`)
    ? await adapterBase(modelFlag)
    : modelFlag ?? DEMO_MODEL;
  const config = await readConfig(configDir);
  const lora = loraProblem(config, options);
  if (lora) throw new UsageError(lora);
  const prequantized = parseQuantizationConfig(config.raw, `${configDir}/config.json`);
  if (prequantized && options.quantize) {
    throw new UsageError(
      `--quantize: ${configDir} is a ${prequantized.method.toUpperCase()} int${prequantized.bits} checkpoint already; drop --quantize`,
    );
  }
  if (prequantized && options.loraRank === 0 && !resume && configDir === modelFlag) {
    throw new UsageError(
      `${configDir} is a ${prequantized.method.toUpperCase()} checkpoint: its weights are frozen integers; train LoRA adapters on it (--lora-rank R)`,
    );
  }
  const limitGb = numberFlag(flags, "memory-limit", is.positive);
  const plan = planMemory(config, options, {
    seqLength: numberFlag(flags, "seq-length", is.positiveInt),
    // the demo's prompts are known; otherwise a 512-token prompt allowance
    promptLength: dataFile === null ? DEMO_PROMPT_LENGTH : 512,
    limitBytes: limitGb === undefined ? undefined : limitGb * 2 ** 30,
  });
  if (flags["dry-run"]) {
    console.log(dryRunReport(config, plan.estimate, configDir, options));
    return 0;
  }
  if (plan.estimate.total > plan.limit) {
    throw new UsageError(memoryRefusal(plan.estimate, plan.limit));
  }
  if (!resume) await lockOut();
  const dev = await initDeviceOrExplain();
  if (!dev) return 1;
  console.log(`device: ${dev.info.description}`);
  const model = await loadRunModel(options, {
    modelDir: modelFlag,
    resume,
    checkFinite: !flags["no-weight-check"],
  }, console.log);
  try {
    const source = await loadRunData(model, options, dataFile);
    if (options.tisCap > 0 && flags["rollout-server"] === undefined) {
      throw new UsageError(
        `the run was recorded with --tis-cap ${options.tisCap}: it needs rollouts from servers (--rollout-server URL)`,
      );
    }
    const servers = flags["rollout-server"] === undefined ? null : await connectRolloutServers(
      model,
      options,
      flags,
      {
        step: state?.step ?? 0,
        loraBase: state?.loraBase ?? model.sourceDir,
      },
      console.log,
    );
    let evaluate: TrainHooks["evaluate"];
    if (evalPath !== null) {
      const { problems, sha256 } = await readEvalData(evalPath);
      const was = (state?.record as Partial<CliRecord> | undefined)?.evalData?.sha256;
      if (evalFlag === null && was && was !== sha256) {
        console.error(
          `warning: ${evalPath} changed since the run started; evaluating on it as it is now`,
        );
      }
      checkEvalData(model, problems, options);
      record.evalData = { path: evalPath, sha256 };
      evaluate = problemValidation(problems, {
        chat: options.chat,
        maxNewTokens: options.maxNewTokens,
        batchSize: options.microBatch,
        target,
        sampler: servers?.sampler,
      });
    } else if (dataFile === null && (options.evalEvery > 0 || target !== null)) {
      evaluate = demoValidation(target, servers?.sampler);
    }
    return await trainAndReport(model, source, options, {
      flags,
      demo: noModelOrData && !resume && dataFile === null,
      evaluate,
      record,
      resumeFrom: resume ? `${out}/${CHECKPOINT}` : null,
      servers,
      loraBase: state?.loraBase ?? model.sourceDir,
    });
  } finally {
    model.dispose();
  }
}

/** Trains with interrupts handled; prints the checkpoint, the merge and the demo table. */
async function trainAndReport(
  model: CausalLM,
  source: ExampleSource,
  options: TrainOptions,
  o: {
    flags: ParsedArgs;
    demo: boolean;
    evaluate: TrainHooks["evaluate"];
    record: CliRecord;
    resumeFrom: string | null;
    servers: RolloutServers | null;
    loraBase: string | null;
  },
): Promise<number> {
  const heldOut = heldOutProblems(DEMO_HELD_OUT);
  let before: DemoScores | null = null;
  if (o.demo) {
    const labeled = METHODS[options.method].answersNeeded(options) !== null;
    console.log(
      `demo: ${options.method.toUpperCase()} of ${DEMO_MODEL} on ${
        labeled ? "labeled" : "unlabeled"
      } arithmetic prompts; evaluating on ${DEMO_HELD_OUT} held-out problems first`,
    );
    before = await evaluateDemo(model, heldOut, options.seed);
  }
  console.log(
    `${options.method} for ${options.steps} steps: ${options.batchSize} prompts/step` +
      (METHODS[options.method].samples ? ` x ${options.nSamples} samples` : "") +
      (options.method === "em-rl"
        ? `, reward ${options.reward} (${options.rewardReduce}), ${options.estimator}, kl ${options.klCoef}`
        : "") +
      `, lr ${options.lr}, output ${options.outDir}`,
  );
  interrupts.training = true;
  try {
    const result = await train(model, source, options, {
      evaluate: o.evaluate,
      shouldStop: () => interrupts.count > 0,
      record: o.record as unknown as Record<string, unknown>,
      ...(o.servers
        ? {
          sampler: o.servers.sampler,
          afterUpdate: (m: CausalLM, step: number) => o.servers!.sync(m, step, o.loraBase),
        }
        : {}),
    }, o.resumeFrom);
    interrupts.training = false;
    if (result.interrupted || interrupts.count > 0) {
      console.log(
        `interrupted at step ${result.lastStep}; checkpoint ${result.checkpoint}; continue with --resume`,
      );
      return INTERRUPTED;
    }
    console.log(
      `checkpoint: ${result.checkpoint}${
        result.best ? `; best (step ${result.best.step}): ${result.best.dir}` : ""
      }`,
    );
    if (o.flags.merge) {
      const merged = `${options.outDir}/merged`;
      await saveModel(model, merged, { merge: true, copyFrom: model.sourceDir });
      console.log(`merged checkpoint (base + LoRA): ${merged}`);
    }
    if (before) {
      const after = await evaluateDemo(model, heldOut, options.seed);
      console.log(`\n${demoTable(before, after)}\n`);
      const tps = result.history.reduce((s, h) => s + h.tokens, 0) /
        result.history.reduce((s, h) => s + h.seconds, 0);
      console.log(`training throughput: ${tps.toFixed(0)} tokens/s (sampling included)`);
    }
    return 0;
  } catch (e) {
    if (e instanceof DivergedError) {
      console.error(`error: ${e.message}`);
      return 1;
    }
    if (e instanceof RolloutError) {
      const saved = `${options.outDir}/${CHECKPOINT}`;
      const step = await readRunState(saved).then((s) => s.step).catch(() => null);
      console.error(
        `error: ${e.message}\n${
          step === null
            ? "no checkpoint was saved yet"
            : `the last checkpoint, ${saved} (step ${step}), is intact: continue with --resume`
        }`,
      );
      return 1;
    }
    throw e;
  } finally {
    interrupts.training = false;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
