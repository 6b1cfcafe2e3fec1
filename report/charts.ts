/**
 * Charts as static SVG: Vega-Lite specs compiled by vega-lite and rendered by
 * vega's headless SVG renderer when the report is written, so a report is one
 * file that opens offline with no script. The only chart code here is the
 * specs; drawing is Vega's.
 * @module
 */
import process from "node:process";

import type { VegaLiteSpec } from "./specs.ts";

export * from "./specs.ts";

interface Vega {
  compile: (spec: VegaLiteSpec) => { spec: unknown };
  parse: (spec: unknown) => unknown;
  View: new (runtime: unknown, options: { renderer: "none" }) => { toSVG(): Promise<string> };
}

let vega: Promise<Vega> | null = null;

/** Loads vega and vega-lite once (their Node builds pull a deprecated module: its warning is muted). */
function loadVega(): Promise<Vega> {
  vega ??= (async () => {
    // Node's documented switch, missing from @types/node's Process
    const node = process as unknown as { noDeprecation?: boolean };
    const muted = node.noDeprecation;
    node.noDeprecation = true;
    try {
      const [{ compile }, { parse, View }] = await Promise.all([
        import("vega-lite"),
        import("vega"),
      ]);
      return { compile, parse, View } as unknown as Vega;
    } finally {
      node.noDeprecation = muted;
    }
  })();
  return vega;
}

/** Renders a Vega-Lite spec to an SVG string. */
export async function renderSvg(spec: VegaLiteSpec): Promise<string> {
  const v = await loadVega();
  const view = new v.View(v.parse(v.compile(spec).spec), { renderer: "none" });
  return await view.toSVG();
}
