/**
 * What `deno task train` loads before step 1: the model (or a resumed run's
 * checkpoint: the full model, or LoRA adapters on the base they name), and
 * the data (the demo generator, or a JSONL file whose every line is checked
 * against the model first).
 * @module
 */
import { recoverDirectory } from "../engine/atomic.ts";
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { loadModel } from "../engine/model/checkpoint.ts";
import { LoraAdapters } from "../engine/model/lora.ts";
import { exists } from "../engine/paths.ts";
import { DemoSource } from "../demo/source.ts";
import { DEMO_MODEL, DEMO_VOCAB } from "../demo/task.ts";
import {
  checkExampleFits,
  encodePrompt,
  type ExampleSource,
  readJsonl,
  ShuffledSource,
} from "./data.ts";
import { METHODS } from "./methods.ts";
import type { TrainOptions } from "./options.ts";
import { CHECKPOINT, readRunState } from "./run_state.ts";

/** The model to train: `modelDir`, or with `resume` the run's checkpoint; LoRA adapters attached. */
export async function loadRunModel(
  o: TrainOptions,
  from: { modelDir: string | null; resume: boolean; checkFinite: boolean },
  log: (line: string) => void,
): Promise<CausalLM> {
  const checkpointDir = `${o.outDir}/${CHECKPOINT}`;
  if (from.resume) {
    const back = await recoverDirectory(checkpointDir);
    if (back) log(`recovered ${checkpointDir} from ${back} (a save was interrupted)`);
    if (!await exists(`${checkpointDir}/trainer_state.json`)) {
      throw new Error(
        `--resume: ${checkpointDir}/trainer_state.json not found (no checkpoint to resume)`,
      );
    }
  }
  const modelDir = from.resume ? checkpointDir : from.modelDir ?? DEMO_MODEL;
  // a resumed LoRA run's checkpoint holds adapters; its base is named in trainer_state.json
  const adapterDir = from.resume && await exists(`${checkpointDir}/adapter_config.json`)
    ? checkpointDir
    : null;
  const baseDir = adapterDir ? (await readRunState(checkpointDir)).loraBase : modelDir;
  if (!baseDir) throw new Error(`${checkpointDir}/trainer_state.json: no loraBase recorded`);
  const lora = adapterDir !== null || o.loraRank > 0;
  // with LoRA the base stays frozen in its stored precision
  const model = await loadModel(baseDir, { trainable: !lora, checkFinite: from.checkFinite });
  try {
    if (adapterDir) model.setAdapters(await LoraAdapters.load(adapterDir, model.config));
    else if (lora) {
      model.setAdapters(LoraAdapters.create(model.config, {
        rank: o.loraRank,
        alpha: o.loraAlpha,
        targets: o.loraTargets,
        seed: o.seed,
      }));
    }
    if (!model.tokenizer) {
      throw new Error(`${modelDir}/tokenizer.json not found: training needs the model's tokenizer`);
    }
  } catch (e) {
    model.dispose();
    throw e;
  }
  return model;
}

/** The run's examples: the demo generator, or `dataFile` checked line by line against the model. */
export async function loadRunData(
  model: CausalLM,
  o: TrainOptions,
  dataFile: string | null,
): Promise<ExampleSource> {
  if (dataFile === null) {
    if (model.config.vocabSize !== DEMO_VOCAB) {
      throw new Error(
        `the demo task needs the demo vocabulary (${DEMO_VOCAB} tokens); ${model.sourceDir} has vocab_size ${model.config.vocabSize}. Pass --data FILE.jsonl`,
      );
    }
    return new DemoSource(o.seed);
  }
  const examples = await readJsonl(dataFile, {
    requireAnswer: METHODS[o.method].answersNeeded(o) ?? undefined,
  });
  // every line must fit the model before the first step, not fail at step 40
  const tok = model.tokenizer!;
  for (const e of examples) {
    const ids = encodePrompt(tok, e.prompt, o.chat);
    const answer = METHODS[o.method].samples ? 0 : tok.encode(e.answer ?? "").length + 1;
    checkExampleFits(e, ids, answer, model.config.maxPositionEmbeddings);
  }
  return new ShuffledSource(dataFile, examples, o.seed);
}
