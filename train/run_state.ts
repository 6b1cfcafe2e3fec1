/**
 * A run's saved state: checkpoints (the model, or with LoRA the adapters in
 * PEFT's format, plus optimizer.safetensors and trainer_state.json, swapped
 * in atomically) and metrics.jsonl, and reading them back to resume.
 * @module
 */
import {
  atomicWriteText,
  recoverDirectory,
  replaceDirectory,
  tempDirectoryBeside,
} from "../engine/atomic.ts";
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { saveModel } from "../engine/model/checkpoint.ts";
import type { AdamW } from "../engine/optim.ts";
import { saveOptimizer } from "../engine/optim_files.ts";
import type { DataRecord } from "./data.ts";
import type { TrainOptions } from "./options.ts";

/** Where a run keeps its latest checkpoint and its best one, inside its output directory. */
export const CHECKPOINT = "checkpoint";
export const BEST = "best";

/** The best evaluation so far and where its checkpoint is. */
export interface Best {
  step: number;
  score: number;
  dir: string;
}

/** trainer_state.json: where the run is, and how it was set up. */
export interface RunState {
  step: number;
  optimizerStep: number;
  /** The rollout sampler's generator state. */
  sampleRng: number;
  /** The example stream's position. */
  source: Record<string, number>;
  options: TrainOptions;
  best: Best | null;
  /** Where the run's initial weights came from (EM-RL reloads its reference from there). */
  referenceDir: string | null;
  /** With LoRA: the base model the adapters adapt. */
  loraBase: string | null;
  /** The data it trains on (a file with its digest, or the demo). */
  data?: DataRecord;
  /** What else the caller recorded of the run (the CLI: its evaluation settings). */
  record?: Record<string, unknown>;
}

/** Reads `dir/trainer_state.json`; errors name the file. */
export async function readRunState(dir: string): Promise<RunState> {
  const path = `${dir}/trainer_state.json`;
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`${path}: cannot read (${(e as Error).message})`);
  }
  let state: RunState;
  try {
    state = JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: not valid JSON (${(e as Error).message}); the file is damaged`);
  }
  const damaged = (field: string, what: string) =>
    new Error(`${path}: "${field}" is missing or not ${what}; the file is damaged`);
  if (!state || typeof state !== "object") throw damaged("step", "an object");
  const count = (v: unknown) => Number.isInteger(v) && (v as number) >= 0;
  if (!count(state.step)) throw damaged("step", "an integer >= 0");
  if (!count(state.optimizerStep)) throw damaged("optimizerStep", "an integer >= 0");
  if (typeof state.sampleRng !== "number") throw damaged("sampleRng", "a number");
  if (!state.source || typeof state.source !== "object") throw damaged("source", "an object");
  if (!state.options || typeof state.options !== "object" || !state.options.method) {
    throw damaged("options", "the run's options");
  }
  return state;
}

/**
 * Writes a checkpoint to `dir`, replacing what was there only once the new
 * one is complete: the model (or its LoRA adapters), the optimizer state and
 * the run state. `replaceSource`: `dir` may be the directory the model was
 * loaded from (a resumed run's own checkpoint).
 */
export async function saveCheckpoint(
  dir: string,
  run: { model: CausalLM; optimizer: AdamW; state: RunState; replaceSource?: boolean },
): Promise<void> {
  const extra = async (tmp: string) => {
    await saveOptimizer(run.optimizer, `${tmp}/optimizer.safetensors`);
    await writeJson(`${tmp}/trainer_state.json`, run.state);
  };
  const adapters = run.model.adapters;
  try {
    if (!adapters) {
      await saveModel(run.model, dir, {
        metadata: { step: String(run.state.step), method: run.state.options.method },
        replaceSource: run.replaceSource,
        extra,
      });
      return;
    }
    const tmp = await tempDirectoryBeside(dir);
    try {
      await adapters.save(tmp, run.state.loraBase);
      await extra(tmp);
      await replaceDirectory(tmp, dir);
    } catch (e) {
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
      throw e;
    }
  } catch (e) {
    // disk full, permissions: the previous checkpoint is intact (saves swap in complete directories)
    throw new SaveError(
      `could not save the checkpoint at step ${run.state.step} to ${dir}: ${
        (e as Error).message
      }. The previous checkpoint there is intact`,
    );
  }
}

/** A checkpoint could not be written; the message names the path and the cause. */
export class SaveError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SaveError";
  }
}

/** Finishes checkpoint swaps a crash interrupted and drops stale temporary directories. */
export async function recoverRun(outDir: string, log: (line: string) => void): Promise<void> {
  for (const name of [CHECKPOINT, BEST]) {
    const back = await recoverDirectory(`${outDir}/${name}`);
    if (back) log(`recovered ${outDir}/${name} from ${back} (a save was interrupted)`);
  }
}

/** Keeps the metrics.jsonl records of steps <= `step` (a resumed run logs the later ones again). */
export async function truncateMetrics(path: string, step: number): Promise<void> {
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
  await atomicWriteText(path, kept.map((l) => l + "\n").join(""));
}

/** Appends one JSON record to a JSONL file. */
export async function appendJsonl(path: string, value: unknown): Promise<void> {
  try {
    await Deno.writeTextFile(path, JSON.stringify(value) + "\n", { append: true });
  } catch (e) {
    throw new Error(`${path}: cannot write (${(e as Error).message})`);
  }
}

async function writeJson(path: string, value: unknown): Promise<void> {
  await atomicWriteText(path, JSON.stringify(value, null, 2) + "\n");
}
