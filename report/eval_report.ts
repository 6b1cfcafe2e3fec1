/**
 * The evaluation's figure: accuracy against cost (generated tokens, seconds)
 * per method, the comparison the paper draws between EM-INF, self-consistency
 * and refinement, with the table beside it.
 * @module
 */
import { renderSvg, scatterChart } from "./charts.ts";
import { escapeHtml, page, table } from "./html.ts";

/** One method's row of `deno task eval`'s table. */
export interface EvalRow {
  method: string;
  /** pass@1 (self-consistency: maj@k), in [0, 1]. */
  accuracy: number;
  seconds: number;
  /** Generated tokens. */
  tokens: number;
}

/** The eval report's HTML: two accuracy-against-cost charts and the table. */
export async function evalReportHtml(
  rows: EvalRow[],
  about: { title: string; lines: string[] },
): Promise<string> {
  const charts: string[] = [];
  for (const [key, xTitle] of [["tokens", "generated tokens"], ["seconds", "seconds"]] as const) {
    const svg = await renderSvg(scatterChart({
      title: `Accuracy against ${xTitle}`,
      xTitle,
      yTitle: "accuracy (%)",
      yDomain: [0, 100],
      points: rows.map((r) => ({
        x: r[key],
        y: 100 * r.accuracy,
        series: r.method,
        label: r.method,
      })),
    }));
    charts.push(`<figure class=chart data-chart="accuracy-${key}">${svg}</figure>`);
  }
  const sampling = rows.find((r) => r.method === "sample");
  return page({
    title: about.title,
    body: [
      ...about.lines.map((l) => `<p>${escapeHtml(l)}</p>`),
      `<section class=charts>${charts.join("\n")}</section>`,
      table(
        ["method", "accuracy", "seconds", "tokens", ...(sampling ? ["tokens vs sampling"] : [])],
        rows.map((r) => [
          r.method,
          `${(100 * r.accuracy).toFixed(1)}%`,
          r.seconds.toFixed(1),
          String(r.tokens),
          ...(sampling
            ? [sampling.tokens ? `${(r.tokens / sampling.tokens).toFixed(2)}x` : "—"]
            : []),
        ]),
      ),
    ].join("\n"),
  });
}
