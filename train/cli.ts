/**
 * `deno task train`: until EM-FT lands, the engine demo (an MLP learning three
 * spirals on the GPU). Flags: --steps --hidden --lr --batch --seed --help.
 * @module
 */
import { parseArgs } from "@std/cli";
import { initDevice, WebGPUUnavailableError } from "../engine/device.ts";
import { runMlpDemo } from "./mlp_demo.ts";

const HELP = `deno task train [flags]

Trains a small MLP on three interleaved spirals with the engine's WebGPU
kernels (autograd, AdamW, clipping) and prints the loss falling.

  --steps N    optimizer steps (default 300)
  --hidden N   hidden width (default 64)
  --lr X       AdamW learning rate (default 0.01)
  --batch N    points per step (default 256)
  --seed N     random seed (default 0)
  --help       this text`;

function positive(
  flags: Record<string, unknown>,
  name: string,
  fallback: number,
  integer = true,
): number {
  const raw = flags[name];
  if (raw === undefined) return fallback;
  const v = Number(raw);
  if (!Number.isFinite(v) || v <= 0 || (integer && !Number.isInteger(v))) {
    throw new Error(`--${name} must be a positive ${integer ? "integer" : "number"}, got "${raw}"`);
  }
  return v;
}

export async function main(args: string[]): Promise<number> {
  let flags;
  try {
    flags = parseArgs(args, {
      string: ["steps", "hidden", "lr", "batch", "seed"],
      boolean: ["help"],
    });
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (flags.help) {
    console.log(HELP);
    return 0;
  }
  let options;
  try {
    options = {
      steps: positive(flags, "steps", 300),
      hidden: positive(flags, "hidden", 64),
      lr: positive(flags, "lr", 0.01, false),
      batch: positive(flags, "batch", 256),
      seed: flags.seed === undefined ? 0 : Number(flags.seed),
    };
    if (!Number.isInteger(options.seed)) {
      throw new Error(`--seed must be an integer, got "${flags.seed}"`);
    }
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    return 2;
  }
  try {
    const dev = await initDevice();
    console.log(`device: ${dev.info.description}`);
  } catch (e) {
    if (e instanceof WebGPUUnavailableError) {
      console.error(`error: ${e.message}`);
      return 1;
    }
    throw e;
  }
  const r = await runMlpDemo(options);
  console.log(
    `loss ${r.firstLoss.toFixed(4)} -> ${r.lastLoss.toFixed(4)}; held-out accuracy ${
      (100 * r.accuracy).toFixed(1)
    }% (chance 33.3%)`,
  );
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
