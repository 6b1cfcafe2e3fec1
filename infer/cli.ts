/**
 * `deno task generate --model DIR --prompt TEXT [--chat] [--max-new-tokens N]
 * [--temperature T] [--top-p P] [--top-k K] [--seed S] [--greedy]`: streams
 * the continuation as it is produced.
 * @module
 */
import { is, numberFlag, parseArgs, quantizeFlag } from "@std/cli";
import { inferenceDryRun } from "./memory.ts";
import { initDeviceOrExplain } from "../engine/device.ts";
import { loadModel } from "../engine/model/checkpoint.ts";
import { checkEncodable } from "../engine/model/tokenizer.ts";
import { generate, NonFiniteLogitsError } from "./generate.ts";
import { EM_INF_DEFAULTS, emInfProcessor } from "./em_inf.ts";
import type { Tensor } from "../engine/tensor.ts";

const HELP = `deno task generate --model DIR --prompt TEXT [flags]

Generates text with a Hugging Face Qwen2/Qwen2.5/Qwen3 checkpoint directory
(config.json, model.safetensors or shards, tokenizer.json), streaming it.

  --model DIR           checkpoint directory (required)
  --prompt TEXT         the prompt (required)
  --chat                wrap the prompt as a user message with the chat template
  --no-thinking         with --chat on Qwen3: enable_thinking=false
  --max-new-tokens N    tokens to generate (default 128)
  --temperature T       sampling temperature; 0 means greedy (default 1, or generation_config.json)
  --top-p P             nucleus sampling mass in (0, 1] (default 1, or generation_config.json)
  --top-k K             keep the K most likely tokens, 0 = off (default 0, or generation_config.json)
  --greedy              argmax decoding
  --seed S              random seed (default 0)
  --em-inf              adjust each step's logits with EM-INF before sampling
  --em-inf-lr X         EM-INF Adam learning rate (default 0.1)
  --em-inf-steps N      EM-INF steps at most (default 5)
  --em-inf-kl X         EM-INF KL(p0||p) weight (default 0.001)
  --em-inf-threshold X  EM-INF stops a row below this entropy (default 0.3)
  --quantize int4|int8  quantize the linear layers at load (GPTQ/AWQ checkpoints need not)
  --dry-run             print the GPU memory decoding needs (weights, KV cache, prefill, EM-INF)
                        from config.json alone, and exit
  --batch N, --context N   the batch and tokens per sequence --dry-run assumes (default 1, and
                        the model's context up to 4096)
  --no-weight-check     skip the NaN/Inf check of the weights at load (one GPU pass over them)
  --help                this text`;

export async function main(args: string[]): Promise<number> {
  let flags;
  try {
    flags = parseArgs(args, {
      string: [
        "model",
        "prompt",
        "max-new-tokens",
        "temperature",
        "top-p",
        "top-k",
        "seed",
        "em-inf-lr",
        "em-inf-steps",
        "em-inf-kl",
        "em-inf-threshold",
        "quantize",
        "batch",
        "context",
      ],
      boolean: ["chat", "greedy", "no-thinking", "em-inf", "no-weight-check", "dry-run", "help"],
    });
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n\nRun with --help for the flags.`);
    return 2;
  }
  if (flags.help) {
    console.log(HELP);
    return 0;
  }
  let options;
  let processor: ((logits: Tensor) => Tensor) | undefined;
  let quantize: "int4" | "int8" | undefined;
  try {
    if (typeof flags.model !== "string") throw new Error("--model DIR is required");
    quantize = quantizeFlag(flags);
    const dryOnly = ["batch", "context"].find((f) => flags[f] !== undefined);
    if (dryOnly && !flags["dry-run"]) throw new Error(`--${dryOnly} sizes --dry-run's estimate`);
    if (flags["dry-run"]) {
      console.log(
        await inferenceDryRun(flags.model, {
          batch: numberFlag(flags, "batch", is.positiveInt) ?? 1,
          context: numberFlag(flags, "context", is.positiveInt),
          quantize,
          emInf: flags["em-inf"] === true,
        }),
      );
      return 0;
    }
    if (typeof flags.prompt !== "string") throw new Error("--prompt TEXT is required");
    options = {
      maxNewTokens: numberFlag(flags, "max-new-tokens", is.positiveInt) ?? 128,
      temperature: numberFlag(flags, "temperature", is.nonNegative),
      topP: numberFlag(flags, "top-p", is.fraction),
      topK: numberFlag(flags, "top-k", is.nonNegativeInt),
      seed: numberFlag(flags, "seed", is.int) ?? 0,
      greedy: flags.greedy === true,
    };
    const emInf = {
      lr: numberFlag(flags, "em-inf-lr", is.positive) ?? EM_INF_DEFAULTS.lr,
      steps: numberFlag(flags, "em-inf-steps", is.positiveInt) ?? EM_INF_DEFAULTS.steps,
      klWeight: numberFlag(flags, "em-inf-kl", is.nonNegative) ?? EM_INF_DEFAULTS.klWeight,
      threshold: numberFlag(flags, "em-inf-threshold", is.nonNegative) ??
        EM_INF_DEFAULTS.threshold,
    };
    if (
      !flags["em-inf"] &&
      ["em-inf-lr", "em-inf-steps", "em-inf-kl", "em-inf-threshold"].some((f) =>
        flags[f] !== undefined
      )
    ) {
      throw new Error("--em-inf-* settings need --em-inf");
    }
    if (flags.greedy && ((options.temperature ?? 0) !== 0 || options.topP !== undefined)) {
      throw new Error(
        `--greedy takes the argmax: it contradicts --${
          options.temperature !== undefined ? "temperature" : "top-p"
        } (use --temperature 0 or drop --greedy)`,
      );
    }
    if (flags.greedy && options.topK !== undefined) {
      throw new Error("--greedy takes the argmax: it contradicts --top-k");
    }
    processor = flags["em-inf"] ? emInfProcessor(emInf) : undefined;
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    return 2;
  }
  if (!await initDeviceOrExplain()) return 1;
  let model;
  try {
    model = await loadModel(flags.model, { checkFinite: !flags["no-weight-check"], quantize });
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    return 1;
  }
  const tok = model.tokenizer;
  if (!tok) {
    console.error(
      `error: ${flags.model}/tokenizer.json not found: generate needs the model's tokenizer`,
    );
    return 1;
  }
  let text = flags.prompt;
  if (flags.chat) {
    if (!tok.hasChatTemplate) {
      console.error(`error: --chat: ${flags.model}/tokenizer_config.json has no chat_template`);
      return 2;
    }
    text = tok.applyChatTemplate([{ role: "user", content: text }], {
      addGenerationPrompt: true,
      ...(flags["no-thinking"] ? { enable_thinking: false } : {}),
    });
  }
  const g = model.generation;
  const encoder = new TextEncoder();
  let printed = "";
  const ids: number[] = [];
  try {
    checkEncodable(tok, flags.prompt, "--prompt");
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    return 2;
  }
  const promptIds = tok.encode(text);
  if (promptIds.length === 0) {
    console.error(`error: --prompt: the prompt encodes to no tokens`);
    return 2;
  }
  const maxPos = model.config.maxPositionEmbeddings;
  if (promptIds.length > maxPos) {
    console.error(
      `error: --prompt: the prompt is ${promptIds.length} tokens, more than max_position_embeddings ${maxPos} of ${flags.model}/config.json`,
    );
    return 2;
  }
  const tooBig = promptIds.find((id) => id >= model.config.vocabSize);
  if (tooBig !== undefined) {
    console.error(
      `error: the tokenizer in ${flags.model} produced id ${tooBig}, but config.json has vocab_size ${model.config.vocabSize}: model and tokenizer do not match`,
    );
    return 1;
  }
  const t0 = performance.now();
  let r;
  try {
    r = await generate(model, [promptIds], {
      ...options,
      temperature: options.temperature ?? g.temperature ?? 1,
      topP: options.topP ?? g.topP ?? 1,
      topK: options.topK ?? g.topK ?? 0,
      logitsProcessor: processor,
      onStep: ([id]) => {
        if (id < 0 || g.eosTokenIds.includes(id)) return;
        ids.push(id);
        // decode the whole continuation so multi-byte characters come out whole
        const full = tok.decode(ids, { skipSpecialTokens: true });
        if (!full.endsWith("\uFFFD")) {
          Deno.stdout.writeSync(encoder.encode(full.slice(printed.length)));
          printed = full;
        }
      },
    });
  } catch (e) {
    if (!(e instanceof NonFiniteLogitsError)) throw e;
    console.error(`\nerror: ${e.message}`);
    return 1;
  }
  const secs = (performance.now() - t0) / 1000;
  console.log(
    `\n[${r.tokens[0].length} tokens in ${secs.toFixed(1)} s, ${
      (r.tokens[0].length / secs).toFixed(1)
    } tok/s${r.finished[0] ? ", eos" : ""}]`,
  );
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
