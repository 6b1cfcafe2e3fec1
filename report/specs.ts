/**
 * The reports' Vega-Lite specifications (rendered to SVG by charts.ts in
 * Deno, drawn live by vega in the browser playground).
 * @module
 */

/** A Vega-Lite specification (https://vega.github.io/vega-lite/docs/). */
export type VegaLiteSpec = Record<string, unknown>;

/** A point of a series: x, y and the series (run or method) it belongs to. */
export interface Point {
  x: number;
  y: number;
  series: string;
}

/** A vertical marker at x (a best checkpoint, a collapse stop), labelled. */
export interface Marker {
  x: number;
  label: string;
  series: string;
}

const WIDTH = 360;
const HEIGHT = 180;

/** Whole-step ticks: every step of a short run, else about ten. */
function stepTicks(points: Point[]): Record<string, unknown> {
  const steps = [...new Set(points.map((p) => p.x))].sort((a, b) => a - b);
  return steps.length <= 12 ? { values: steps } : { tickCount: 10, tickMinStep: 1 };
}

/** Lines over steps, one colour per series, with labelled vertical markers. */
export function lineChart(
  o: { title: string; xTitle: string; yTitle: string; points: Point[]; markers?: Marker[] },
): VegaLiteSpec {
  const color = { field: "series", type: "nominal", title: null };
  const layers: VegaLiteSpec[] = [{
    data: { values: o.points },
    mark: { type: "line", point: o.points.length < 40, strokeWidth: 1.5 },
    encoding: {
      // whole steps; values as small as a learning rate keep their digits
      x: {
        field: "x",
        type: "quantitative",
        title: o.xTitle,
        axis: { format: "d", ...stepTicks(o.points) },
      },
      y: {
        field: "y",
        type: "quantitative",
        title: o.yTitle,
        scale: { zero: false },
        axis: { format: ".3~r" },
      },
      color,
    },
  }];
  if (o.markers?.length) {
    layers.push(
      {
        data: { values: o.markers },
        mark: { type: "rule", strokeDash: [4, 3] },
        encoding: { x: { field: "x", type: "quantitative" }, color },
      },
      {
        data: { values: o.markers },
        mark: { type: "text", align: "left", dx: 3, dy: -4, baseline: "bottom", fontSize: 10 },
        encoding: {
          x: { field: "x", type: "quantitative" },
          y: { value: 8 },
          text: { field: "label" },
          color,
        },
      },
    );
  }
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v5.json",
    title: o.title,
    width: WIDTH,
    height: HEIGHT,
    layer: layers,
  };
}

/** Labelled points: y against x (accuracy against cost), one colour per series. */
export function scatterChart(
  o: {
    title: string;
    xTitle: string;
    yTitle: string;
    /** The y axis' range, e.g. [0, 100] for percentages. */
    yDomain: [number, number];
    points: (Point & { label: string })[];
  },
): VegaLiteSpec {
  const x = { field: "x", type: "quantitative", title: o.xTitle, scale: { zero: true } };
  const y = { field: "y", type: "quantitative", title: o.yTitle, scale: { domain: o.yDomain } };
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v5.json",
    title: o.title,
    width: WIDTH,
    height: HEIGHT + 60,
    data: { values: o.points },
    layer: [
      {
        mark: { type: "point", filled: true, size: 80 },
        encoding: { x, y, color: { field: "series", type: "nominal", title: null } },
      },
      {
        mark: { type: "text", align: "left", dx: 7, fontSize: 10 },
        encoding: { x, y, text: { field: "label" } },
      },
    ],
  };
}
