/**
 * A small `parseArgs` in the spirit of @std/cli, on node:util (JSR is not
 * reachable from our machines; the import map names this file `@std/cli`).
 * @module
 */
import { parseArgs as nodeParseArgs } from "node:util";

export interface FlagSpec {
  string?: string[];
  boolean?: string[];
  default?: Record<string, string | boolean>;
}

/** Parses `--flag value`, `--flag=value` and boolean `--flag`; unknown flags throw naming the flag. */
export interface ParsedArgs {
  [flag: string]: string | boolean | string[] | undefined;
  /** Positional arguments. */
  _: string[];
}

export function parseArgs(args: string[], spec: FlagSpec): ParsedArgs {
  const options: Record<string, { type: "string" | "boolean"; default?: string | boolean }> = {};
  for (const s of spec.string ?? []) options[s] = { type: "string" };
  for (const b of spec.boolean ?? []) options[b] = { type: "boolean" };
  for (const [k, v] of Object.entries(spec.default ?? {})) if (options[k]) options[k].default = v;
  try {
    const { values, positionals } = nodeParseArgs({
      args,
      options,
      allowPositionals: true,
      strict: true,
    });
    return { ...(values as Record<string, string | boolean>), _: positionals };
  } catch (e) {
    throw new Error((e as Error).message.replace(/^.*?: /, ""));
  }
}
