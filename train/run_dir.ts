/**
 * A run's output directory, checked before anything is loaded or trained:
 * it must be a writable directory; a run already in it is continued
 * (--resume), replaced (--overwrite) or refused; the model must not live
 * inside it, since the run replaces its checkpoints.
 * @module
 */
import { exists, pathKind, resolvePath } from "../engine/paths.ts";

/** What a run leaves in its output directory. */
const RUN_FILES = ["metrics.jsonl", "checkpoint", "best"];

/** Checks `out` against `modelDir` and the flags; returns an error message, or null. */
export async function prepareOutDir(
  out: string,
  modelDir: string | null,
  flags: { resume?: boolean; overwrite?: boolean },
): Promise<string | null> {
  const kind = await pathKind(out);
  if (kind === "file") return `--out ${out} is a file; pass a directory`;
  try {
    await Deno.mkdir(out, { recursive: true });
    const probe = `${out}/.write-test-${Deno.pid}`;
    await Deno.writeTextFile(probe, "");
    await Deno.remove(probe);
  } catch (e) {
    return `--out ${out}: cannot write there (${(e as Error).message})`;
  }
  if (modelDir !== null) {
    const [m, o] = [await resolvePath(modelDir), await resolvePath(out)];
    if (m === o || m.startsWith(o + "/")) {
      return `--model ${modelDir} lies inside --out ${out}, whose checkpoints this run replaces; copy the model elsewhere or pass another --out`;
    }
  }
  const held: string[] = [];
  for (const name of RUN_FILES) if (await exists(`${out}/${name}`)) held.push(name);
  for await (const e of Deno.readDir(out)) {
    if (/^(checkpoint|best)\.(new|old)-/.test(e.name)) held.push(e.name);
  }
  if (flags.resume || held.length === 0) return null;
  if (!flags.overwrite) {
    return `--out ${out} already holds a run (${
      held.join(", ")
    }): pass --resume to continue it, a new --out, or --overwrite to replace it`;
  }
  for (const name of held) await Deno.remove(`${out}/${name}`, { recursive: true });
  return null;
}
