/**
 * The demo task: exact-answer arithmetic written as characters, as in
 * REFERENCE_RESULTS.md. `a+b` and `a-b` with a, b in 100..999 (a >= b for -),
 * `a*b` with a, b in 10..99. Prompt `537+268=`, answer `805` then eos.
 * @module
 */
import { Rng } from "../engine/random.ts";

/** Characters of the demo vocabulary; id 14 is eos and doubles as pad. */
export const DEMO_CHARS = "0123456789+-*=";
export const DEMO_EOS = 14;
export const DEMO_VOCAB = 15;
/** Prompts are left-padded to this many tokens. */
export const DEMO_PROMPT_LENGTH = 8;
/** Longest answer (4 digits for 99*99) plus eos. */
export const DEMO_MAX_NEW_TOKENS = 5;
/** Number of held-out problems reserved for evaluation (never trained on). */
export const DEMO_HELD_OUT = 500;
/** The shipped demo model (never written to). */
export const DEMO_MODEL = new URL("./model", import.meta.url).pathname;

export interface Problem {
  prompt: string;
  answer: string;
}

/** One random problem. */
export function randomProblem(rng: Rng): Problem {
  const op = rng.int(3);
  if (op === 2) {
    const a = 10 + rng.int(90);
    const b = 10 + rng.int(90);
    return { prompt: `${a}*${b}=`, answer: String(a * b) };
  }
  let a = 100 + rng.int(900);
  let b = 100 + rng.int(900);
  if (op === 1 && a < b) [a, b] = [b, a];
  return op === 0
    ? { prompt: `${a}+${b}=`, answer: String(a + b) }
    : { prompt: `${a}-${b}=`, answer: String(a - b) };
}

/** Token ids of demo text (throws on a character outside the vocabulary). */
export function encodeDemo(text: string): number[] {
  return [...text].map((c) => {
    const id = DEMO_CHARS.indexOf(c);
    if (id < 0) {
      throw new Error(
        `demo task: character ${JSON.stringify(c)} is not in the vocabulary "${DEMO_CHARS}"`,
      );
    }
    return id;
  });
}

/** Text of response ids up to the first eos. */
export function decodeDemo(ids: number[]): string {
  const end = ids.indexOf(DEMO_EOS);
  return (end < 0 ? ids : ids.slice(0, end)).map((i) => DEMO_CHARS[i] ?? "?").join("");
}

/** The held-out evaluation problems: a fixed seed, never used for training. */
export function heldOutProblems(n: number, seed = 20251126): Problem[] {
  const rng = new Rng(seed);
  const seen = new Set<string>();
  const out: Problem[] = [];
  while (out.length < n) {
    const p = randomProblem(rng);
    if (!seen.has(p.prompt)) {
      seen.add(p.prompt);
      out.push(p);
    }
  }
  return out;
}

/** A stream of training problems that skips every held-out prompt. */
export class ProblemStream {
  readonly rng: Rng;
  readonly #exclude: Set<string>;
  constructor(seed: number, exclude: Problem[]) {
    this.rng = new Rng(seed);
    this.#exclude = new Set(exclude.map((p) => p.prompt));
  }
  next(): Problem {
    for (;;) {
      const p = randomProblem(this.rng);
      if (!this.#exclude.has(p.prompt)) return p;
    }
  }
}

/** The demo model's config.json (Qwen2 architecture, 0.79M parameters as in REFERENCE_RESULTS.md). */
export function demoConfig(
  size: {
    hidden?: number;
    layers?: number;
    heads?: number;
    kvHeads?: number;
    intermediate?: number;
  } = {},
): Record<string, unknown> {
  return {
    architectures: ["Qwen2ForCausalLM"],
    model_type: "qwen2",
    vocab_size: DEMO_VOCAB,
    hidden_size: size.hidden ?? 128,
    intermediate_size: size.intermediate ?? 384,
    num_hidden_layers: size.layers ?? 4,
    num_attention_heads: size.heads ?? 4,
    num_key_value_heads: size.kvHeads ?? 2,
    hidden_act: "silu",
    max_position_embeddings: 64,
    rms_norm_eps: 1e-6,
    rope_theta: 10000.0,
    tie_word_embeddings: true,
    use_sliding_window: false,
    sliding_window: null,
    bos_token_id: null,
    eos_token_id: DEMO_EOS,
    pad_token_id: DEMO_EOS,
    dtype: "float32",
  };
}
