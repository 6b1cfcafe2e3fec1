/**
 * Where a checkpoint's files come from: a directory on disk (Deno,
 * checkpoint.ts's dirSource) or a URL (a browser, url_source.ts). The loader
 * (load.ts) reads through this and nothing else, so both load the same way.
 * @module
 */
import type { SafetensorsReader } from "../safetensors_format.ts";

export interface CheckpointSource {
  /** The directory or URL, as messages name it; files are `${name}/${file}`. */
  readonly name: string;
  /** A file's text, or null when it does not exist (other failures throw; callers name the file). */
  text(file: string): Promise<string | null>;
  /** A .safetensors file opened for reading tensor by tensor. */
  safetensors(file: string): Promise<SafetensorsReader>;
}

/** A JSON object file of `source`, or null when absent; errors name the file. */
export async function readJsonObject(
  source: CheckpointSource,
  file: string,
): Promise<Record<string, unknown> | null> {
  let text: string | null;
  try {
    text = await source.text(file);
  } catch (e) {
    throw new Error(`${source.name}/${file}: cannot read (${(e as Error).message})`);
  }
  if (text === null) return null;
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new Error(`${source.name}/${file}: is not valid JSON (${(e as Error).message})`);
  }
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) {
    throw new Error(`${source.name}/${file}: is not a JSON object`);
  }
  return raw as Record<string, unknown>;
}
