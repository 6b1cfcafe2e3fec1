/**
 * JSON Lines files: one JSON object per line, blank lines skipped, UTF-8
 * (a leading byte-order mark is accepted; invalid UTF-8 is an error). Every
 * error names the file and the line.
 * @module
 */

/** One record of a JSONL file and where it came from (`FILE:LINE`). */
export interface JsonlRecord {
  value: Record<string, unknown>;
  origin: string;
}

/** A file's records and the SHA-256 of its bytes (to tell later whether it changed). */
export interface JsonlFile {
  records: JsonlRecord[];
  sha256: string;
}

/** Hex SHA-256 of bytes. */
export async function sha256Hex(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The SHA-256 of a file's bytes; errors name the file. */
export async function fileSha256(path: string): Promise<string> {
  try {
    return await sha256Hex(await Deno.readFile(path));
  } catch (e) {
    throw new Error(`${path}: cannot read (${(e as Error).message})`);
  }
}

/**
 * Reads `path` and checks each record with `check`, which returns a problem
 * ("\"prompt\" must be a string") or null; the error names `FILE:LINE`.
 */
export async function readJsonlFile(
  path: string,
  check: (value: Record<string, unknown>) => string | null = () => null,
): Promise<JsonlFile> {
  let bytes: Uint8Array<ArrayBuffer>;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`${path}: cannot read (${(e as Error).message})`);
  }
  const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  const out: JsonlRecord[] = [];
  let start = bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? 3 : 0; // BOM
  for (let line = 1; start <= bytes.length; line++) {
    let end = bytes.indexOf(0x0a, start);
    if (end < 0) end = bytes.length;
    const origin = `${path}:${line}`;
    let text: string;
    try {
      text = utf8.decode(bytes.subarray(start, end));
    } catch {
      throw new Error(`${origin}: not valid UTF-8 (save the file as UTF-8)`);
    }
    start = end + 1;
    if (!text.trim()) continue;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new Error(`${origin}: not valid JSON (${(e as Error).message})`);
    }
    if (!value || typeof value !== "object" || Array.isArray(value)) {
      throw new Error(`${origin}: not a JSON object`);
    }
    const problem = check(value as Record<string, unknown>);
    if (problem) throw new Error(`${origin}: ${problem}`);
    out.push({ value: value as Record<string, unknown>, origin });
  }
  if (out.length === 0) throw new Error(`${path}: no records`);
  return { records: out, sha256: await sha256Hex(bytes) };
}

/** The records of `readJsonlFile`, without the digest. */
export async function readJsonlRecords(
  path: string,
  check: (value: Record<string, unknown>) => string | null = () => null,
): Promise<JsonlRecord[]> {
  return (await readJsonlFile(path, check)).records;
}
