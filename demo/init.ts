/**
 * Creates the demo model's starting point: a Qwen2-architecture directory with
 * config.json, the char-level tokenizer (tokenizer.json in Hugging Face format),
 * generation_config.json and seeded random weights (normal(0, 0.02) as
 * transformers initialises them, norms 1). SFT then trains it.
 *
 *   deno task demo:init --out DIR [--seed S]
 * @module
 */
import { parseArgs } from "@std/cli";
import { initDevice } from "../engine/device.ts";
import { parseQwenConfig } from "../engine/model/qwen.ts";
import { randomModel } from "../engine/model/init.ts";
import { saveModel } from "../engine/model/checkpoint.ts";
import { atomicWrite } from "../engine/atomic.ts";
import { DEMO_CHARS, DEMO_EOS, demoConfig } from "./task.ts";

/** tokenizer.json of the demo: one token per character, eos <|endoftext|>. */
export function demoTokenizerJson(): Record<string, unknown> {
  const vocab: Record<string, number> = Object.fromEntries([...DEMO_CHARS].map((c, i) => [c, i]));
  vocab["<|endoftext|>"] = DEMO_EOS;
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [{
      id: DEMO_EOS,
      content: "<|endoftext|>",
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    }],
    normalizer: null,
    pre_tokenizer: { type: "Split", pattern: { String: "" }, behavior: "Isolated", invert: false },
    post_processor: null,
    decoder: { type: "Fuse" },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
}

async function writeJson(path: string, value: unknown): Promise<void> {
  await atomicWrite(path, async (f) => {
    await f.write(new TextEncoder().encode(JSON.stringify(value, null, 2) + "\n"));
  });
}

/** Writes a fresh demo model directory. */
export async function initDemoModel(out: string, seed = 0): Promise<void> {
  const config = demoConfig();
  const model = randomModel(parseQwenConfig(config), { seed, std: 0.02 });
  const staging = await Deno.makeTempDir({ prefix: "demo_tok_" });
  await writeJson(`${staging}/tokenizer.json`, demoTokenizerJson());
  await writeJson(`${staging}/tokenizer_config.json`, {
    tokenizer_class: "PreTrainedTokenizerFast",
    eos_token: "<|endoftext|>",
    pad_token: "<|endoftext|>",
    model_max_length: 64,
  });
  await writeJson(`${staging}/generation_config.json`, {
    eos_token_id: DEMO_EOS,
    pad_token_id: DEMO_EOS,
  });
  await saveModel(model, out, { copyFrom: staging, metadata: { init_seed: String(seed) } });
  model.dispose();
  await Deno.remove(staging, { recursive: true });
}

if (import.meta.main) {
  const flags = parseArgs(Deno.args, { string: ["out", "seed"] });
  if (typeof flags.out !== "string") {
    console.error("error: --out DIR is required");
    Deno.exit(2);
  }
  await initDevice();
  await initDemoModel(flags.out, Number(flags.seed ?? 0));
  console.log(`wrote ${flags.out}`);
}
