/**
 * `deno task train`: EM-FT, EM-RL or SFT of a Qwen checkpoint. With no
 * arguments, the embedded demo: EM-FT (or `--method em-rl`) of the shipped
 * arithmetic model on unlabeled prompts from the task generator, with a
 * before/after table on held-out problems.
 * @module
 */
import { is, numberFlag } from "@std/cli";
import { initDeviceOrExplain } from "../engine/device.ts";
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { readConfig, saveModel } from "../engine/model/checkpoint.ts";
import { type DemoScores, evaluateDemo } from "../demo/evaluate.ts";
import { DEMO_HELD_OUT, DEMO_MODEL, DEMO_PROMPT_LENGTH, heldOutProblems } from "../demo/task.ts";
import { demoTable, demoValidation } from "../demo/training.ts";
import { HELP, parseTrainFlags } from "./cli_flags.ts";
import { loadRunData, loadRunModel } from "./cli_setup.ts";
import type { ExampleSource } from "./data.ts";
import { dryRunReport, memoryRefusal, planMemory } from "./memory.ts";
import { METHODS } from "./methods.ts";
import { prepareOutDir } from "./run_dir.ts";
import { CHECKPOINT } from "./run_state.ts";
import { DivergedError, train } from "./trainer.ts";

export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseTrainFlags(args);
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n\nRun with --help for the flags.`);
    return 2;
  }
  const { options, flags, demo } = parsed;
  if (flags.help) {
    console.log(HELP);
    return 0;
  }
  const modelFlag = typeof flags.model === "string" ? flags.model : null;
  const dataFile = typeof flags.data === "string" ? flags.data : null;
  // the memory an update needs, from config.json alone: printed by --dry-run, checked before loading
  let plan;
  try {
    const config = await readConfig(modelFlag ?? DEMO_MODEL);
    const limitGb = numberFlag(flags, "memory-limit", is.positive);
    plan = {
      config,
      ...planMemory(config, options, {
        seqLength: numberFlag(flags, "seq-length", is.positiveInt),
        // the demo's prompts are known; otherwise a 512-token prompt allowance
        promptLength: dataFile === null ? DEMO_PROMPT_LENGTH : 512,
        limitBytes: limitGb === undefined ? undefined : limitGb * 2 ** 30,
      }),
    };
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    return 1;
  }
  if (flags["dry-run"]) {
    console.log(dryRunReport(plan.config, plan.estimate, modelFlag ?? DEMO_MODEL, options));
    return 0;
  }
  if (plan.estimate.total > plan.limit) {
    console.error(`error: ${memoryRefusal(plan.estimate, plan.limit)}`);
    return 2;
  }
  const outProblem = await prepareOutDir(options.outDir, modelFlag, {
    resume: flags.resume === true,
    overwrite: flags.overwrite === true,
  });
  if (outProblem) {
    console.error(`error: ${outProblem}`);
    return 2;
  }
  const dev = await initDeviceOrExplain();
  if (!dev) return 1;
  console.log(`device: ${dev.info.description}`);
  let model: CausalLM;
  let source: ExampleSource;
  try {
    model = await loadRunModel(options, {
      modelDir: modelFlag,
      resume: flags.resume === true,
      checkFinite: !flags["no-weight-check"],
    }, console.log);
    try {
      source = await loadRunData(model, options, dataFile);
    } catch (e) {
      model.dispose();
      throw e;
    }
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    return 1;
  }
  const target = flags["target-accuracy"] === undefined ? null : Number(flags["target-accuracy"]);
  const heldOut = heldOutProblems(DEMO_HELD_OUT);
  let before: DemoScores | null = null;
  if (demo && !flags.resume) {
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
  try {
    const result = await train(model, source, options, {
      evaluate: dataFile === null && (options.evalEvery > 0 || target !== null)
        ? demoValidation(target)
        : undefined,
    }, flags.resume ? `${options.outDir}/${CHECKPOINT}` : null);
    console.log(
      `checkpoint: ${result.checkpoint}${
        result.best ? `; best (step ${result.best.step}): ${result.best.dir}` : ""
      }`,
    );
    if (flags.merge) {
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
  } catch (e) {
    if (e instanceof DivergedError) {
      console.error(`error: ${e.message}`);
      return 1;
    }
    throw e;
  } finally {
    model.dispose();
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
