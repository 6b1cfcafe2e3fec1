/**
 * Training data: prompts (with optional answers) from JSONL
 * (`{"prompt": ..., "answer"?: ...}`), as a deterministic stream whose state
 * is saved with checkpoints so that a resumed run sees the same prompts.
 * The demo's generator (demo/source.ts) is another ExampleSource.
 * @module
 */
import { Rng } from "../engine/random.ts";
import { checkEncodable, type QwenTokenizer } from "../engine/model/tokenizer.ts";

export { checkEncodable };

/** One training example; `answer` is used by SFT and by evaluation only. */
export interface Example {
  prompt: string;
  answer?: string;
  /** Where it came from (e.g. `data.jsonl:12`), for error messages. */
  origin?: string;
}

/** What a run records of its data, to resume from the same examples. */
export interface DataRecord {
  /** "demo", or the JSONL file's path. */
  source: string;
  /** The file's SHA-256, so that a changed file is refused on resume. */
  sha256?: string;
  examples?: number;
}

/** A resumable stream of examples. */
export interface ExampleSource {
  readonly name: string;
  next(n: number): Example[];
  /** Serializable position in the stream. */
  state(): Record<string, number>;
  restore(state: Record<string, number>): void;
  /** What a checkpoint records of the data. */
  describe?(): DataRecord;
}

/** Cycles through examples in a seeded shuffled order, reshuffling every epoch. */
export class ShuffledSource implements ExampleSource {
  readonly name: string;
  #examples: Example[];
  #order: number[] = [];
  #pos = 0;
  #epoch = 0;
  #seed: number;
  #sha256: string | undefined;

  /** `name`: the file they came from; `sha256`: its digest, recorded with checkpoints. */
  constructor(name: string, examples: Example[], seed: number, sha256?: string) {
    this.name = name;
    this.#examples = examples;
    this.#seed = seed;
    this.#sha256 = sha256;
    this.#shuffle();
  }

  describe(): DataRecord {
    return { source: this.name, sha256: this.#sha256, examples: this.#examples.length };
  }

  #shuffle(): void {
    const rng = new Rng(this.#seed * 1000003 + this.#epoch);
    this.#order = this.#examples.map((_, i) => i);
    for (let i = this.#order.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [this.#order[i], this.#order[j]] = [this.#order[j], this.#order[i]];
    }
  }

  next(n: number): Example[] {
    const out: Example[] = [];
    while (out.length < n) {
      if (this.#pos >= this.#order.length) {
        this.#epoch++;
        this.#pos = 0;
        this.#shuffle();
      }
      out.push(this.#examples[this.#order[this.#pos++]]);
    }
    return out;
  }

  state(): Record<string, number> {
    return { epoch: this.#epoch, pos: this.#pos };
  }

  restore(s: Record<string, number>): void {
    this.#epoch = s.epoch;
    this.#pos = s.pos;
    this.#shuffle();
  }
}

/**
 * Checks that an example fits the model: its prompt encodes to at least one
 * token, and prompt (+ answer tokens) + `extra` new tokens fit
 * max_position_embeddings. Throws naming the example's origin and both numbers.
 */
export function checkExampleFits(
  e: Example,
  promptIds: number[],
  answerTokens: number,
  maxPositions: number,
): void {
  const where = e.origin ?? `prompt ${JSON.stringify(e.prompt.slice(0, 40))}`;
  if (promptIds.length === 0) throw new Error(`${where}: the prompt encodes to no tokens`);
  const n = promptIds.length + answerTokens;
  if (n > maxPositions) {
    throw new Error(
      `${where}: the ${
        answerTokens ? "prompt and answer are" : "prompt is"
      } ${n} tokens, more than the model's max_position_embeddings (${maxPositions})`,
    );
  }
}

/** Token ids of a prompt: raw text, or the chat template with a generation prompt. */
export function encodePrompt(tok: QwenTokenizer, prompt: string, chat: boolean): number[] {
  if (!chat) return tok.encode(prompt);
  return tok.encode(
    tok.applyChatTemplate([{ role: "user", content: prompt }], { addGenerationPrompt: true }),
  );
}
