/**
 * The Qwen tokenizer: tokenizer.json through @huggingface/tokenizers, chat
 * templates from tokenizer_config.json through @huggingface/jinja.
 * @module
 */
import { Tokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";

/** One chat message. */
export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool" | string;
  content: string;
}

/** Options of applyChatTemplate; extra keys (e.g. enable_thinking) go to the template. */
export interface ChatTemplateOptions {
  addGenerationPrompt?: boolean;
  [kwarg: string]: unknown;
}

export class QwenTokenizer {
  readonly #tokenizer: Tokenizer;
  readonly #template: Template | null;
  readonly #config: Record<string, unknown>;
  readonly #specialIds: Set<number>;
  /** Ids that end generation: eos_token of tokenizer_config.json. */
  readonly eosTokenIds: number[];
  readonly padTokenId: number | null;
  readonly vocabSize: number;

  constructor(
    tokenizerJson: Record<string, unknown>,
    config: Record<string, unknown>,
    path = "tokenizer",
  ) {
    const model = tokenizerJson?.model as { type?: unknown; vocab?: unknown } | undefined;
    if (!model || typeof model !== "object" || typeof model.vocab !== "object" || !model.vocab) {
      throw new Error(
        `${path}/tokenizer.json: is not a Hugging Face tokenizer (no "model" with a "vocab")`,
      );
    }
    try {
      this.#tokenizer = new Tokenizer(tokenizerJson, config);
    } catch (e) {
      throw new Error(`${path}/tokenizer.json: cannot be loaded (${(e as Error).message})`);
    }
    this.#config = config;
    const template = config.chat_template;
    const source = typeof template === "string"
      ? template
      : Array.isArray(template)
      ? (template.find((t) => t?.name === "default")?.template as string | undefined) ?? null
      : null;
    try {
      this.#template = source ? new Template(source) : null;
    } catch (e) {
      throw new Error(
        `${path}/tokenizer_config.json: chat_template does not parse (${(e as Error).message})`,
      );
    }
    const added = (tokenizerJson.added_tokens ?? []) as {
      id: number;
      content: string;
      special?: boolean;
    }[];
    this.#specialIds = new Set(added.filter((t) => t.special).map((t) => t.id));
    const idOf = (token: unknown): number | null => {
      const text = typeof token === "string"
        ? token
        : (token as { content?: string } | null)?.content;
      if (!text) return null;
      const hit = added.find((t) => t.content === text);
      if (hit) return hit.id;
      const ids = this.#tokenizer.encode(text, { add_special_tokens: false }).ids;
      return ids.length === 1 ? ids[0] : null;
    };
    const eos = idOf(config.eos_token);
    this.eosTokenIds = eos === null ? [] : [eos];
    this.padTokenId = idOf(config.pad_token);
    const vocab = ((tokenizerJson.model as { vocab?: Record<string, number> })?.vocab) ?? {};
    let top = -1;
    for (const id of Object.values(vocab)) if (id > top) top = id;
    for (const t of added) if (t.id > top) top = t.id;
    this.vocabSize = top + 1;
  }

  /** Token ids of `text` (no special tokens added). */
  encode(text: string): number[] {
    return this.#tokenizer.encode(text, { add_special_tokens: false }).ids;
  }

  /** Text of `ids`; special tokens are kept unless skipSpecialTokens. */
  decode(ids: ArrayLike<number>, options: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return ""; // tokenizers.js rejects an empty list
    return this.#tokenizer.decode(Array.from(ids), {
      skip_special_tokens: options.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: false,
    });
  }

  /** True for added special tokens such as <|im_end|>. */
  isSpecial(id: number): boolean {
    return this.#specialIds.has(id);
  }

  get hasChatTemplate(): boolean {
    return this.#template !== null;
  }

  /** Renders messages with the model's chat template (as transformers' apply_chat_template). */
  applyChatTemplate(messages: ChatMessage[], options: ChatTemplateOptions = {}): string {
    if (!this.#template) {
      throw new Error("applyChatTemplate: tokenizer_config.json has no chat_template");
    }
    const { addGenerationPrompt = false, ...kwargs } = options;
    const special = (k: string) => {
      const v = this.#config[k];
      return typeof v === "string" ? v : (v as { content?: string } | null)?.content ?? null;
    };
    return this.#template.render({
      messages,
      add_generation_prompt: addGenerationPrompt,
      bos_token: special("bos_token") ?? "",
      eos_token: special("eos_token") ?? "",
      pad_token: special("pad_token") ?? "",
      ...kwargs,
    });
  }
}

/**
 * Throws naming `origin` when the tokenizer cannot represent part of `text`
 * (it would be dropped silently): the first such character and its position.
 * Unicode normalisation (NFC) the tokenizer applies is not a loss.
 */
export function checkEncodable(tok: QwenTokenizer, text: string, origin: string): void {
  const back = tok.decode(tok.encode(text));
  if (back === text || back === text.normalize("NFC")) return;
  const chars = [...text.normalize("NFC")];
  const kept = [...back];
  let i = 0;
  while (i < chars.length && chars[i] === kept[i]) i++;
  const c = chars[i] ?? "";
  const code = c.codePointAt(0)?.toString(16).toUpperCase().padStart(4, "0") ?? "";
  throw new Error(
    `${origin}: the tokenizer cannot represent ${JSON.stringify(c)} (U+${code}, character ${
      i + 1
    }); it would be dropped. Remove it or use the model's own vocabulary`,
  );
}
