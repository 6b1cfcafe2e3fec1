/**
 * `deno task report RUN_DIR... [--out FILE.html]`: one report of one or
 * several runs, overlaid (EM-FT against EM-RL, two learning rates).
 * @module
 */
import { parseArgs } from "@std/cli";
import { writeRunReport } from "./run_report.ts";

const HELP = `deno task report RUN_DIR... [--out FILE.html]

Renders the runs' metrics.jsonl and checkpoint/trainer_state.json as one
self-contained HTML page (static SVG charts, opens offline), the runs
overlaid. A run with missing or partial metrics still renders, saying what
is missing.

  --out FILE.html   where to write it (default: report.html)
  --help            this text`;

export async function main(args: string[]): Promise<number> {
  let flags;
  try {
    flags = parseArgs(args, { string: ["out"], boolean: ["help"], positionals: true });
  } catch (e) {
    console.error(`error: ${(e as Error).message}\nRun with --help for the flags.`);
    return 2;
  }
  if (flags.help) {
    console.log(HELP);
    return 0;
  }
  const dirs = flags._;
  if (!dirs.length) {
    console.error(
      "error: name at least one run directory (a train --out)\nRun with --help for the flags.",
    );
    return 2;
  }
  for (const dir of dirs) {
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(dir);
    } catch {
      console.error(`error: ${dir}: no such run directory`);
      return 2;
    }
    if (!info.isDirectory) {
      console.error(`error: ${dir}: not a directory (a run directory is a train --out)`);
      return 2;
    }
  }
  const out = (flags.out as string | undefined) ?? "report.html";
  if (!out.endsWith(".html")) {
    console.error(`error: --out must name an .html file, got "${out}"`);
    return 2;
  }
  let runs;
  try {
    runs = await writeRunReport(dirs, out);
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    return 1;
  }
  for (const r of runs) {
    const evals = r.evals.length ? `, ${r.evals.length} evaluations` : "";
    console.log(`${r.dir}: ${r.steps.length} steps${evals}`);
    for (const p of r.problems) console.log(`  missing: ${p}`);
  }
  console.log(`wrote ${out}`);
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
