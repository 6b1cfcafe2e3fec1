/**
 * `deno task train --resume`: the run continues as it was recorded. The
 * options come from the checkpoint's trainer_state.json; a flag given with
 * --resume that contradicts the record is refused naming both values; only
 * flags that cannot change what the run computes may differ (how long it
 * runs, how often it saves and evaluates, how the update is split into
 * micro-batches), and they are listed. The data must be the recorded file,
 * unchanged.
 * @module
 */
import type { ParsedArgs } from "@std/cli";
import { fileSha256 } from "../engine/jsonl.ts";
import type { TrainOptions } from "./options.ts";
import type { RunState } from "./run_state.ts";

/** Options a resumed run may change: when it stops, saves and evaluates, and micro-batching. */
const CHANGEABLE: (keyof TrainOptions)[] = [
  "steps",
  "saveEvery",
  "evalEvery",
  "stopOnCollapse",
  "microBatch",
  "recompute",
  "asyncRollouts",
];

/** What the CLI records beside the options (trainer_state.json's `record`). */
export interface CliRecord {
  evalData: { path: string; sha256: string } | null;
  targetAccuracy: number | null;
}

/** The option a flag sets: `--lora-rank` -> loraRank, `--out` -> outDir. */
export function optionOf(flag: string): keyof TrainOptions {
  if (flag === "out") return "outDir";
  return flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase()) as keyof TrainOptions;
}

const show = (v: unknown) => Array.isArray(v) ? v.join(",") : String(v);

/**
 * The resumed run's options: the record's, with the changeable ones the
 * flags give. Throws naming the flag and both values on a contradiction.
 * Returns the changes, to print.
 */
export function resumeOptions(
  state: RunState,
  flags: ParsedArgs,
  parsed: TrainOptions,
  statePath: string,
): { options: TrainOptions; changes: string[] } {
  const recorded = state.options;
  const options: TrainOptions = { ...recorded, outDir: parsed.outDir };
  const changes: string[] = [];
  for (const flag of Object.keys(flags)) {
    if (flag === "_") continue;
    const key = optionOf(flag);
    if (!(key in recorded) || key === "outDir") continue; // not a run option (--model, --data, ...)
    const [given, was] = [parsed[key], recorded[key]];
    if (show(given) === show(was)) continue;
    if (!CHANGEABLE.includes(key)) {
      throw new Error(
        `--${flag} ${show(given)} contradicts the run's recorded ${show(was)} (${statePath}); ` +
          `drop --${flag} to continue the run as recorded, or start a new run with another --out`,
      );
    }
    (options as unknown as Record<string, unknown>)[key] = given;
    changes.push(`--${flag} ${show(given)} (recorded ${show(was)})`);
  }
  if (flags.merge && options.loraRank === 0) {
    throw new Error(
      `--merge folds LoRA adapters into the weights, but the run in ${statePath} is full fine-tuning (lora rank 0)`,
    );
  }
  return { options, changes };
}

/**
 * The data file a resumed run reads: the recorded one, unchanged. A --data
 * that names another file, or a recorded file whose contents changed, is
 * refused (the saved position would point at other examples). Null for the demo.
 */
export async function resumeData(
  state: RunState,
  dataFlag: string | null,
  statePath: string,
): Promise<string | null> {
  const data = state.data;
  if (!data) return dataFlag; // recorded by an older version: the flags decide
  if (data.source === "demo") {
    if (dataFlag !== null) {
      throw new Error(
        `--data ${dataFlag}: the run in ${statePath} trains on the demo generator; drop --data to continue it`,
      );
    }
    return null;
  }
  const path = dataFlag ?? data.source;
  if (dataFlag !== null && dataFlag !== data.source) {
    const same = data.sha256 !== undefined && await fileSha256(dataFlag) === data.sha256;
    if (!same) {
      throw new Error(
        `--data ${dataFlag} is not the run's recorded data ${data.source} (${statePath}); ` +
          "drop --data to continue with the recorded file, or start a new run with another --out",
      );
    }
  }
  if (data.sha256 !== undefined && await fileSha256(path) !== data.sha256) {
    throw new Error(
      `${path} changed since the run started (its SHA-256 is not the one recorded in ${statePath}); ` +
        "the saved position in the data would point at other examples: restore the file or start a new run",
    );
  }
  return path;
}
