/**
 * Run reports and the eval chart: written by real (tiny) runs, rendered in a
 * real browser (headless Chromium), every chart present and non-empty, and
 * runs with missing or partial metrics still rendered, saying what is missing.
 */
import { assert, assertEquals } from "@std/assert";
import { readRun, RUN_CHARTS, runReportHtml } from "../report/run_report.ts";
import { runCli } from "./_cli.ts";
import { heldOutProblems } from "../demo/task.ts";
import {
  browserTest,
  launchBrowser,
  maybeSaveScreenshot,
  openPage,
  screenshotShows,
} from "./_browser.ts";
import type { Page } from "puppeteer-core";

const TRAIN = "../train/cli.ts";
const EVAL = "../infer/eval_cli.ts";

/** Each chart figure of the open page: its title and how many drawn marks (paths, symbols) it holds. */
function chartsOf(page: Page): Promise<{ title: string; marks: number }[]> {
  return page.$$eval("figure.chart", (figs) =>
    figs.map((f) => ({
      title: f.getAttribute("data-chart") ?? "",
      marks:
        [...f.querySelectorAll("svg .mark-line.role-mark path, svg .mark-symbol.role-mark path")]
          .filter((p) => (p.getAttribute("d") ?? "").length > 4).length,
    })));
}

Deno.test({
  name:
    "the run report of a real EM-RL run with evaluations renders every chart in Chromium; runs overlay",
  ...browserTest,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "report_" });
    // a few demo problems as data (no before/after demo table: the test stays quick)
    const line = (p: { prompt: string; answer: string }) =>
      JSON.stringify({ prompt: p.prompt, answer: p.answer });
    const problems = heldOutProblems(40);
    await Deno.writeTextFile(`${dir}/train.jsonl`, problems.slice(0, 20).map(line).join("\n"));
    await Deno.writeTextFile(
      `${dir}/eval.jsonl`,
      problems.slice(20).map((p) => JSON.stringify({ problem: p.prompt, answer: p.answer }))
        .join("\n"),
    );
    const common = [
      "--data",
      `${dir}/train.jsonl`,
      "--steps",
      "2",
      "--batch-size",
      "4",
      "--n-samples",
      "2",
      "--max-new-tokens",
      "5",
    ];
    const rl = await runCli(TRAIN, [
      "--method",
      "em-rl",
      ...common,
      "--eval-data",
      `${dir}/eval.jsonl`,
      "--eval-every",
      "1",
      "--out",
      `${dir}/em-rl`,
    ]);
    assertEquals(rl.code, 0, rl.stderr);
    const ft = await runCli(TRAIN, [...common, "--out", `${dir}/em-ft`]);
    assertEquals(ft.code, 0, ft.stderr);
    const both = await runCli("../report/cli.ts", [
      `${dir}/em-rl`,
      `${dir}/em-ft`,
      "--out",
      `${dir}/both.html`,
    ]);
    assertEquals(both.code, 0, both.stderr);
    const browser = await launchBrowser();
    try {
      // the trainer's own report: every chart, the best checkpoint marked
      const { page, errors } = await openPage(browser);
      await page.goto(`file://${dir}/em-rl/report.html`);
      const charts = await chartsOf(page);
      assertEquals(charts.map((c) => c.title), RUN_CHARTS.map((c) => c.title));
      for (const c of charts) assert(c.marks > 0, `${c.title}: nothing drawn`);
      const text = await page.$eval("body", (b) => b.textContent ?? "");
      assert(/best \(step \d\)/.test(text), "the best checkpoint is marked");
      assert(!text.includes("Missing") && !text.includes("Not in these runs"), text.slice(0, 400));
      assert(await screenshotShows(page), "the screenshot is blank");
      await maybeSaveScreenshot(page, "report.png");
      assertEquals(errors, []);
      // two runs overlaid: both names in the legends
      await page.goto(`file://${dir}/both.html`);
      const legend = await page.$$eval(
        ".role-legend-label text",
        (t) => t.map((x) => x.textContent),
      );
      assert(
        legend.some((l) => l?.startsWith("em-rl")) && legend.some((l) => l?.startsWith("em-ft")),
      );
      // EM-FT has no reward: said for that run, the EM-RL run's reward still drawn
      const overlaid = await chartsOf(page);
      assert(overlaid.find((c) => c.title === "Reward")!.marks > 0);
      assert((await page.content()).includes("em-ft: no reward"));
    } finally {
      await browser.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "reports of a crashed run, an old run and an empty directory render, saying what is missing",
  ...browserTest,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "report_partial_" });
    // an older run: only loss and entropy; a crash cut the last line short; no checkpoint
    await Deno.mkdir(`${dir}/old`);
    await Deno.writeTextFile(
      `${dir}/old/metrics.jsonl`,
      '{"step":1,"loss":0.5,"entropy":0.4}\n{"step":2,"loss":0.45,"entropy":0.35}\n{"step":3,"lo',
    );
    await Deno.mkdir(`${dir}/empty`);
    const runs = [await readRun(`${dir}/old`), await readRun(`${dir}/empty`)];
    assertEquals(runs[0].steps.length, 2);
    const html = await runReportHtml(runs);
    for (
      const said of [
        `${dir}/old/metrics.jsonl: 1 unreadable line(s) skipped`,
        `${dir}/old/checkpoint/trainer_state.json: missing`,
        `${dir}/empty/metrics.jsonl: missing`,
        "Not in these runs' metrics, so not drawn: Reward (reward)",
        "No configuration",
      ]
    ) assert(html.includes(said), said);
    await Deno.writeTextFile(`${dir}/partial.html`, html);
    const browser = await launchBrowser();
    try {
      const { page, errors } = await openPage(browser);
      await page.goto(`file://${dir}/partial.html`);
      const charts = await chartsOf(page);
      assertEquals(charts.map((c) => c.title), ["Loss", "Mean token entropy"]);
      for (const c of charts) assert(c.marks > 0, c.title);
      assert(await page.$("#missing"), "a Missing section");
      assertEquals(errors, []);
    } finally {
      await browser.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "deno task eval --report: accuracy against tokens and seconds per method, with the table",
  ...browserTest,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "eval_report_" });
    const methods = ["greedy", "sample", "em-inf"];
    const r = await runCli(EVAL, [
      "--limit",
      "24",
      "--methods",
      methods.join(","),
      "--report",
      `${dir}/eval.html`,
    ]);
    assertEquals(r.code, 0, r.stderr);
    const bad = await runCli(EVAL, ["--report", `${dir}/eval.txt`]);
    assertEquals(bad.code, 2);
    assert(bad.stderr.includes("--report must name an .html file"), bad.stderr);
    const browser = await launchBrowser();
    try {
      const { page, errors } = await openPage(browser);
      await page.goto(`file://${dir}/eval.html`);
      const charts = await chartsOf(page);
      assertEquals(charts.map((c) => c.title), ["accuracy-tokens", "accuracy-seconds"]);
      for (const c of charts) assertEquals(c.marks, methods.length, c.title);
      const cells = await page.$$eval(
        "tbody tr td:first-child",
        (t) => t.map((x) => x.textContent),
      );
      assertEquals(cells, methods);
      assert(await screenshotShows(page));
      await maybeSaveScreenshot(page, "eval.png");
      assertEquals(errors, []);
    } finally {
      await browser.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
