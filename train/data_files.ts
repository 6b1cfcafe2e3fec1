/**
 * Training data from JSONL files: one example a line, errors naming the file,
 * line and field.
 * @module
 */
import { readJsonlFile } from "../engine/jsonl.ts";
import type { Example } from "./data.ts";

/**
 * Reads a JSONL file of `{"prompt": string, "answer"?: string}`; errors name
 * the file, line and field. `requireAnswer`: why every line needs an answer
 * (e.g. "--method sft"), when it does.
 */
export async function readJsonl(
  path: string,
  options: { requireAnswer?: string } = {},
): Promise<Example[]> {
  return (await readExamples(path, options)).examples;
}

/** `readJsonl` with the file's SHA-256 (for ShuffledSource's record). */
export async function readExamples(
  path: string,
  options: { requireAnswer?: string } = {},
): Promise<{ examples: Example[]; sha256: string }> {
  const { records, sha256 } = await readJsonlFile(path, (o) => {
    if (typeof o.prompt !== "string" || !o.prompt) return `"prompt" must be a non-empty string`;
    if (o.answer !== undefined && typeof o.answer !== "string" && typeof o.answer !== "number") {
      return `"answer" must be a string or number`;
    }
    if (options.requireAnswer && o.answer === undefined) {
      return `"answer" is required with ${options.requireAnswer}`;
    }
    return null;
  });
  const examples = records.map(({ value: o, origin }) => ({
    prompt: o.prompt as string,
    answer: o.answer === undefined ? undefined : String(o.answer),
    origin,
  }));
  return { examples, sha256 };
}
