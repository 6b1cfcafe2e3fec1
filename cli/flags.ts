/**
 * A small `parseArgs` in the spirit of @std/cli, on node:util (JSR is not
 * reachable from our machines; the import map names this file `@std/cli`).
 * @module
 */
import { parseArgs as nodeParseArgs } from "node:util";

export interface FlagSpec {
  string?: string[];
  boolean?: string[];
  /** String flags that may repeat; their values come as a list. */
  collect?: string[];
  default?: Record<string, string | boolean>;
  /** Accept positional arguments (default false: a stray word is an error, e.g. an unquoted prompt). */
  positionals?: boolean;
}

/** Parses `--flag value`, `--flag=value` and boolean `--flag`; unknown flags throw naming the flag. */
export interface ParsedArgs {
  [flag: string]: string | boolean | string[] | undefined;
  /** Positional arguments. */
  _: string[];
}

export function parseArgs(args: string[], spec: FlagSpec): ParsedArgs {
  const options: Record<
    string,
    { type: "string" | "boolean"; multiple?: boolean; default?: string | boolean }
  > = {};
  for (const s of spec.string ?? []) options[s] = { type: "string" };
  for (const s of spec.collect ?? []) options[s] = { type: "string", multiple: true };
  for (const b of spec.boolean ?? []) options[b] = { type: "boolean" };
  for (const [k, v] of Object.entries(spec.default ?? {})) if (options[k]) options[k].default = v;
  let parsed: ParsedArgs;
  try {
    const { values, positionals } = nodeParseArgs({
      args,
      options,
      allowPositionals: true,
      strict: true,
    });
    parsed = { ...(values as Record<string, string | boolean>), _: positionals };
  } catch (e) {
    throw new Error((e as Error).message.replace(/^.*?: /, ""));
  }
  if (!spec.positionals && parsed._.length > 0) {
    throw new Error(
      `unexpected argument "${
        parsed._[0]
      }": every value follows its --flag (quote text with spaces)`,
    );
  }
  return parsed;
}

/** A decimal number as people write it: no hex, octal, binary, Infinity or blanks. */
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/** Checks of numeric flag values, with the words an error uses. */
export const is = {
  positiveInt: [(v: number) => Number.isInteger(v) && v > 0, "a positive integer"],
  nonNegativeInt: [(v: number) => Number.isInteger(v) && v >= 0, "an integer >= 0"],
  int: [Number.isInteger, "an integer"],
  positive: [(v: number) => v > 0, "a positive number"],
  nonNegative: [(v: number) => v >= 0, "a number >= 0"],
  fraction: [(v: number) => v > 0 && v <= 1, "in (0, 1]"],
} as const satisfies Record<string, readonly [(v: number) => boolean, string]>;

/** The number given for --name, undefined when absent; throws naming the flag when it fails `check`. */
export function numberFlag(
  flags: ParsedArgs,
  name: string,
  [check, what]: readonly [(v: number) => boolean, string],
): number | undefined {
  const raw = flags[name];
  if (raw === undefined) return undefined;
  const v = Number(raw);
  if (typeof raw !== "string" || !DECIMAL.test(raw) || !Number.isFinite(v) || !check(v)) {
    throw new Error(`--${name} must be ${what}, got "${raw}"`);
  }
  return v;
}

/** --quantize int4|int8, undefined when absent; throws naming the flag. */
export function quantizeFlag(flags: ParsedArgs): "int4" | "int8" | undefined {
  const v = flags.quantize;
  if (v === undefined) return undefined;
  if (v !== "int4" && v !== "int8") throw new Error(`--quantize must be int4 or int8, got "${v}"`);
  return v;
}
