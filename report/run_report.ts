/**
 * A run's report: curves over steps from OUT/metrics.jsonl (loss, entropy,
 * reward, KL, clip fraction, response length, gradient norm, learning rate,
 * tokens/s, GPU memory, validation accuracy with the best checkpoint and a
 * collapse stop marked) and the run's configuration from
 * OUT/checkpoint/trainer_state.json, as one self-contained HTML file. Several
 * runs are overlaid. Whatever is missing (a crashed run, an older run without
 * some fields) is said on the page instead of failing.
 * @module
 */
import { lineChart, type Marker, type Point, renderSvg } from "./charts.ts";
import { escapeHtml, page, table } from "./html.ts";
import { atomicWriteText } from "../engine/atomic.ts";

/** What a run directory holds, read leniently. */
export interface RunData {
  dir: string;
  /** The run's name in legends: its directory's last component. */
  name: string;
  /** metrics.jsonl's step lines. */
  steps: Record<string, number>[];
  /** Its evaluation lines (`eval: true`). */
  evals: Record<string, number>[];
  /** Its stop lines (`stop: "collapse"`, ...). */
  stops: { step: number; stop: string }[];
  /** checkpoint/trainer_state.json, or null. */
  state: Record<string, unknown> | null;
  /** What could not be read, said on the page. */
  problems: string[];
}

async function readText(path: string): Promise<string | null> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/** Reads a run directory (metrics.jsonl, checkpoint/trainer_state.json); never throws on content. */
export async function readRun(dir: string): Promise<RunData> {
  const name = dir.replace(/\/+$/, "").split("/").pop() || dir;
  const run: RunData = { dir, name, steps: [], evals: [], stops: [], state: null, problems: [] };
  const metrics = await readText(`${dir}/metrics.jsonl`);
  if (metrics === null) run.problems.push(`${dir}/metrics.jsonl: missing (no step finished?)`);
  let bad = 0;
  for (const line of (metrics ?? "").split("\n")) {
    if (!line.trim()) continue;
    let row: Record<string, unknown>;
    try {
      row = JSON.parse(line);
    } catch {
      bad++; // a line cut short by a crash
      continue;
    }
    if (typeof row !== "object" || row === null || typeof row.step !== "number") {
      bad++;
      continue;
    }
    if (typeof row.stop === "string") run.stops.push({ step: row.step, stop: row.stop });
    else if (row.eval === true) run.evals.push(row as Record<string, number>);
    else run.steps.push(row as Record<string, number>);
  }
  if (bad) run.problems.push(`${dir}/metrics.jsonl: ${bad} unreadable line(s) skipped`);
  const state = await readText(`${dir}/checkpoint/trainer_state.json`);
  if (state === null) {
    run.problems.push(`${dir}/checkpoint/trainer_state.json: missing (no checkpoint saved yet)`);
  } else {
    try {
      run.state = JSON.parse(state);
    } catch {
      run.problems.push(`${dir}/checkpoint/trainer_state.json: not valid JSON`);
    }
  }
  return run;
}

/** One chart: series from step-line fields (scaled), or from the evaluation lines. */
interface ChartDef {
  title: string;
  yTitle: string;
  fields: { key: string; label: string }[];
  scale?: number;
  evals?: boolean;
}

const MIB = 1 / 2 ** 20;
const f = (key: string, label = key) => ({ key, label });

/** The report's charts, in page order. */
export const RUN_CHARTS: ChartDef[] = [
  { title: "Loss", yTitle: "loss", fields: [f("loss")] },
  { title: "Mean token entropy", yTitle: "nats", fields: [f("entropy")] },
  { title: "Reward", yTitle: "mean reward", fields: [f("reward")] },
  { title: "KL to the reference", yTitle: "k3 estimate", fields: [f("kl")] },
  { title: "Clip fraction", yTitle: "share of tokens", fields: [f("clipFraction")] },
  { title: "Response length", yTitle: "tokens", fields: [f("responseLength")] },
  { title: "Gradient norm", yTitle: "|g| before clipping", fields: [f("gradNorm")] },
  { title: "Learning rate", yTitle: "lr", fields: [f("lr")] },
  {
    title: "Throughput",
    yTitle: "tokens/s",
    fields: [f("rolloutTokensPerSecond", "rollout"), f("updateTokensPerSecond", "update")],
  },
  {
    title: "GPU memory",
    yTitle: "MiB",
    fields: [f("pooledBytes", "pool"), f("updatePeakBytes", "update peak")],
    scale: MIB,
  },
  {
    title: "Validation accuracy",
    yTitle: "greedy accuracy (%)",
    fields: [f("greedyAccuracy", "accuracy")],
    scale: 100,
    evals: true,
  },
];

/** The chart's points over every run, and what no run had. */
function seriesOf(def: ChartDef, runs: RunData[]): { points: Point[]; missing: string[] } {
  const points: Point[] = [];
  const missing: string[] = [];
  for (const run of runs) {
    const rows = def.evals ? run.evals : run.steps;
    for (const { key, label } of def.fields) {
      const series = [runs.length > 1 ? run.name : "", def.fields.length > 1 ? label : ""]
        .filter((s) => s).join(" · ") || run.name;
      const before = points.length;
      for (const r of rows) {
        const y = r[key];
        if (typeof y === "number" && Number.isFinite(y)) {
          points.push({ x: r.step, y: y * (def.scale ?? 1), series });
        }
      }
      if (points.length === before) missing.push(`${run.name}: no ${key}`);
    }
  }
  return { points, missing };
}

/** Best checkpoint and stop markers of every run (on the validation chart). */
function markersOf(runs: RunData[]): Marker[] {
  return runs.flatMap((run) => {
    const series = run.name; // the validation line's own series
    const best = run.state?.best as { step?: number; score?: number } | null | undefined;
    return [
      ...(best && typeof best.step === "number"
        ? [{ x: best.step, label: `best (step ${best.step})`, series }]
        : []),
      ...run.stops.map((s) => ({ x: s.step, label: `${s.stop} stop`, series })),
    ];
  });
}

/** The run's options as rows (every run side by side). */
function configTable(runs: RunData[]): string {
  const options = runs.map((r) => (r.state?.options ?? {}) as Record<string, unknown>);
  const keys = [...new Set(options.flatMap((o) => Object.keys(o)))].sort();
  if (!keys.length) return "<p class=missing>No configuration: no trainer_state.json.</p>";
  const cell = (v: unknown) =>
    v === undefined ? "—" : typeof v === "object" ? JSON.stringify(v) : String(v);
  return table(
    ["option", ...runs.map((r) => r.name)],
    keys.map((k) => [k, ...options.map((o) => cell(o[k]))]),
  );
}

/** The report's HTML: every chart as inline SVG, the missing ones named. */
export async function runReportHtml(runs: RunData[]): Promise<string> {
  const charts: string[] = [];
  const missingCharts: string[] = [];
  const markers = markersOf(runs);
  for (const def of RUN_CHARTS) {
    const { points, missing } = seriesOf(def, runs);
    if (!points.length) {
      missingCharts.push(`${def.title} (${def.fields.map((x) => x.key).join(", ")})`);
      continue;
    }
    const svg = await renderSvg(lineChart({
      title: def.title,
      xTitle: "step",
      yTitle: def.yTitle,
      points,
      markers: def.evals ? markers : [],
    }));
    const note = missing.length && runs.length > 1
      ? `<p class=missing>${escapeHtml(missing.join("; "))}</p>`
      : "";
    charts.push(
      `<figure class=chart data-chart="${escapeHtml(def.title)}">${svg}${note}</figure>`,
    );
  }
  const problems = runs.flatMap((r) => r.problems);
  const summary = runs.map((r) => {
    const last = r.steps.at(-1);
    const best = r.state?.best as { step: number; score: number } | null | undefined;
    return [
      r.name,
      r.dir,
      String((r.state?.options as Record<string, unknown> | undefined)?.method ?? "—"),
      last ? String(last.step) : "—",
      best ? `${(100 * best.score).toFixed(1)}% (step ${best.step})` : "—",
      r.stops.map((s) => `${s.stop} at step ${s.step}`).join(", ") || "—",
    ];
  });
  return page({
    title: `Run report: ${runs.map((r) => r.name).join(", ")}`,
    body: [
      table(["run", "directory", "method", "last step", "best", "stopped"], summary),
      problems.length
        ? `<section class=missing id=missing><h2>Missing</h2><ul>${
          problems.map((p) => `<li>${escapeHtml(p)}</li>`).join("")
        }</ul></section>`
        : "",
      // a method logs what it computes (EM-FT: no reward or KL), validation needs --eval-every
      missingCharts.length
        ? `<p class=note id=not-logged>Not in these runs' metrics, so not drawn: ${
          escapeHtml(missingCharts.join("; "))
        }.</p>`
        : "",
      `<section class=charts>${charts.join("\n")}</section>`,
      `<h2>Configuration</h2>${configTable(runs)}`,
    ].join("\n"),
  });
}

/** Writes the report of `runDirs` to `outFile` (atomically: an old report stays whole until replaced). */
export async function writeRunReport(runDirs: string[], outFile: string): Promise<RunData[]> {
  const runs = await Promise.all(runDirs.map(readRun));
  // runs/a/out and runs/b/out: legends and columns need more than the last component
  const names = runs.map((r) => r.name);
  runs.forEach((r) => {
    if (names.filter((n) => n === r.name).length > 1) r.name = r.dir;
  });
  await atomicWriteText(outFile, await runReportHtml(runs));
  return runs;
}
