/**
 * A checkpoint served over HTTP(S) as the loader's source: the same files as
 * a directory (config.json, model.safetensors or shards, tokenizer files),
 * fetched. The browser build loads the demo model this way.
 * @module
 */
import { bytesReader, SafetensorsReader } from "../safetensors_format.ts";
import type { CausalLM } from "./causal_lm.ts";
import { loadFrom, type LoadOptions } from "./load.ts";
import type { CheckpointSource } from "./source.ts";

/**
 * The checkpoint whose files are under `base` (a URL; relative to the page in
 * a browser). `files`, when known (a listing), spares fetching the optional
 * files that are absent: a browser logs every 404 as a console error.
 */
export function urlSource(base: string | URL, files?: string[]): CheckpointSource {
  const root = String(base).replace(/\/+$/, "");
  const present = files ? new Set(files) : null;
  const get = async (file: string): Promise<Response | null> => {
    if (present && !present.has(file)) return null;
    let r: Response;
    try {
      r = await fetch(`${root}/${file}`);
    } catch (e) {
      throw new Error(`cannot fetch ${root}/${file} (${(e as Error).message})`);
    }
    if (r.status === 404) {
      await r.body?.cancel();
      return null;
    }
    if (!r.ok) throw new Error(`HTTP ${r.status} ${r.statusText} for ${root}/${file}`);
    return r;
  };
  return {
    name: root,
    text: async (file) => (await (await get(file))?.text()) ?? null,
    async safetensors(file) {
      const r = await get(file);
      if (!r) throw new Error(`${root}/${file}: not found (HTTP 404)`);
      const bytes = new Uint8Array(await r.arrayBuffer());
      return await SafetensorsReader.fromReader(`${root}/${file}`, bytesReader(bytes));
    },
  };
}

/** loadModel for a checkpoint at a URL (no PEFT adapter directories); `files` as for urlSource. */
export function loadModelFromUrl(
  base: string | URL,
  options: LoadOptions & { files?: string[] } = {},
): Promise<CausalLM> {
  const { files, ...load } = options;
  return loadFrom(urlSource(base, files), load);
}
