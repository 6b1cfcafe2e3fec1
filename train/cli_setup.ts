/**
 * What `deno task train` loads before step 1: the model (or a resumed run's
 * checkpoint: the full model, or LoRA adapters on the base they name; a PEFT
 * adapter directory as --model trains those adapters), and the data (the
 * demo generator, or a JSONL file whose every line is checked against the
 * model first), each problem a one-line error naming the file and line; and
 * the rollout servers, when rollouts are sampled elsewhere.
 * @module
 */
import { is, numberFlag, type ParsedArgs } from "@std/cli";
import { recoverDirectory } from "../engine/atomic.ts";
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { loadModel } from "../engine/model/checkpoint.ts";
import { type DecoderConfig, linearShapes } from "../engine/model/config.ts";
import { LoraAdapters } from "../engine/model/lora.ts";
import { exists } from "../engine/paths.ts";
import { DemoSource } from "../demo/source.ts";
import { DEMO_MODEL, DEMO_VOCAB } from "../demo/task.ts";
import {
  checkEncodable,
  checkExampleFits,
  encodePrompt,
  type ExampleSource,
  ShuffledSource,
} from "./data.ts";
import { readExamples } from "./data_files.ts";
import { METHODS } from "./methods.ts";
import type { TrainOptions } from "./options.ts";
import { RolloutError, RolloutServers } from "./rollout_servers.ts";
import { CHECKPOINT } from "./run_state.ts";

/** Why LoRA of rank `rank` cannot adapt these targets (a rank above a layer's size), or null. */
export function loraProblem(config: DecoderConfig, o: TrainOptions): string | null {
  if (o.loraRank === 0) return null;
  const shapes = linearShapes(config);
  const small = o.loraTargets.find((t) => o.loraRank > Math.min(...shapes[t]));
  if (small === undefined) return null;
  return `--lora-rank ${o.loraRank} exceeds the ${small} projection's size (${
    shapes[small].join(" x ")
  }): a rank above min(out, in) adds nothing; use at most ${Math.min(...shapes[small])}`;
}

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
  const dir = from.resume ? checkpointDir : from.modelDir ?? DEMO_MODEL;
  // a PEFT adapter directory (a LoRA run's checkpoint, or --model ADAPTER) loads its base frozen
  const isAdapter = !await exists(`${dir}/config.json`) &&
    await exists(`${dir}/adapter_config.json`);
  if (isAdapter && !from.resume && o.loraRank > 0) {
    throw new Error(
      `--model ${dir} is a LoRA adapter: it trains as it is; drop --lora-rank (or give --model its base to start new adapters)`,
    );
  }
  const lora = isAdapter || o.loraRank > 0;
  // with LoRA the base stays frozen in its stored precision
  const model = await loadModel(dir, {
    trainable: !lora,
    checkFinite: from.checkFinite,
    quantize: o.quantize ?? undefined,
  });
  try {
    if (!isAdapter && lora) {
      model.setAdapters(LoraAdapters.create(model.config, {
        rank: o.loraRank,
        alpha: o.loraAlpha,
        targets: o.loraTargets,
        seed: o.seed,
      }));
    }
    if (!model.tokenizer) {
      throw new Error(`${dir}/tokenizer.json not found: training needs the model's tokenizer`);
    }
    if (o.chat && !model.tokenizer.hasChatTemplate) {
      throw new Error(`--chat: ${model.sourceDir}/tokenizer_config.json has no chat_template`);
    }
  } catch (e) {
    model.dispose();
    throw e;
  }
  return model;
}

/**
 * The run's examples: the demo generator, or `dataFile` checked line by line
 * against the model: encodable, and prompt (plus answer for SFT, plus
 * --max-new-tokens when sampling) within max_position_embeddings.
 */
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
  const { examples, sha256 } = await readExamples(dataFile, {
    requireAnswer: METHODS[o.method].answersNeeded(o) ?? undefined,
  });
  // every line must fit the model before the first step, not fail at step 40
  const tok = model.tokenizer!;
  const samples = METHODS[o.method].samples;
  const max = model.config.maxPositionEmbeddings;
  for (const e of examples) {
    checkEncodable(tok, e.prompt, e.origin!);
    if (!samples) checkEncodable(tok, e.answer ?? "", e.origin!);
    const ids = encodePrompt(tok, e.prompt, o.chat);
    checkExampleFits(e, ids, samples ? 0 : tok.encode(e.answer ?? "").length + 1, max);
    if (samples && ids.length + o.maxNewTokens > max) {
      throw new Error(
        `${e.origin}: the prompt (${ids.length} tokens) plus --max-new-tokens ${o.maxNewTokens} exceed the model's max_position_embeddings (${max})`,
      );
    }
  }
  return new ShuffledSource(dataFile, examples, o.seed, sha256);
}

/**
 * --rollout-server: the servers, checked before step 1 (each answers and
 * serves one model; full fine-tuning needs servers that reload weights),
 * holding the run's current weights (version `step`).
 */
export async function connectRolloutServers(
  model: CausalLM,
  o: TrainOptions,
  flags: ParsedArgs,
  at: { step: number; loraBase: string | null },
  log: (line: string) => void,
): Promise<RolloutServers> {
  const urls = String(flags["rollout-server"]).split(",").map((u) => u.trim()).filter(Boolean);
  const apiKey = typeof flags["rollout-api-key"] === "string"
    ? flags["rollout-api-key"]
    : Deno.env.get("OPENAI_API_KEY") ?? null;
  const servers = await RolloutServers.connect(urls, model.config.vocabSize, {
    timeoutSeconds: numberFlag(flags, "rollout-timeout", is.positive) ?? 600,
    retries: numberFlag(flags, "rollout-retries", is.nonNegativeInt) ?? 3,
    syncDir: typeof flags["sync-dir"] === "string" ? flags["sync-dir"] : `${o.outDir}/sync`,
    apiKey,
    log,
  });
  if (!model.adapters) {
    const problem = servers.fullWeightsProblem();
    if (problem) throw new RolloutError(problem);
  }
  log(
    `rollouts from ${
      servers.servers.map((s) => `${s.url} (${s.kind})`).join(", ")
    }, model ${servers.baseModel}${o.asyncRollouts ? ", one step ahead (--async-rollouts)" : ""}`,
  );
  if (servers.servers.some((s) => s.kind === "vllm") && o.temperature !== 1) {
    log(
      `note: vLLM reports log-probs of the raw logits unless served with --logprobs-mode processed_logprobs; the mismatch metrics and --tis-cap need the tempered ones (--temperature ${o.temperature})`,
    );
  }
  // the servers may hold anything (another run's weights): they get this run's before step 1
  await servers.sync(model, at.step, at.loraBase);
  return servers;
}
