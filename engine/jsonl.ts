/**
 * JSON Lines files: one JSON object per line, blank lines skipped. Every
 * error names the file and the line.
 * @module
 */

/** One record of a JSONL file and where it came from (`FILE:LINE`). */
export interface JsonlRecord {
  value: Record<string, unknown>;
  origin: string;
}

/**
 * Reads `path` and checks each record with `check`, which returns a problem
 * ("\"prompt\" must be a string") or null; the error names `FILE:LINE`.
 */
export async function readJsonlRecords(
  path: string,
  check: (value: Record<string, unknown>) => string | null = () => null,
): Promise<JsonlRecord[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`${path}: cannot read (${(e as Error).message})`);
  }
  const out: JsonlRecord[] = [];
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    const origin = `${path}:${i + 1}`;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (e) {
      throw new Error(`${origin}: not valid JSON (${(e as Error).message})`);
    }
    if (!value || typeof value !== "object" || Array.isArray(value)) {
      throw new Error(`${origin}: not a JSON object`);
    }
    const problem = check(value as Record<string, unknown>);
    if (problem) throw new Error(`${origin}: ${problem}`);
    out.push({ value: value as Record<string, unknown>, origin });
  });
  if (out.length === 0) throw new Error(`${path}: no records`);
  return out;
}
