/**
 * The import graph stays layered: no module imports itself through others
 * (a cycle), and each layer imports only what lies below it. Read from
 * `deno info --json`, so a new violation fails here with its path.
 */
import { assertEquals } from "@std/assert";

const ROOT = new URL("../", import.meta.url).href;
const ENTRIES = ["mod.ts", "train/cli.ts", "infer/cli.ts", "infer/eval_cli.ts", "demo/init.ts"];

interface Info {
  modules: { specifier: string; dependencies?: { code?: { specifier: string } }[] }[];
}

/** Local module -> the local modules it imports (paths relative to the repository). */
async function importGraph(): Promise<Map<string, string[]>> {
  const graph = new Map<string, string[]>();
  for (const entry of ENTRIES) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", new URL(entry, ROOT).pathname],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
    const info: Info = JSON.parse(new TextDecoder().decode(out.stdout));
    for (const m of info.modules) {
      if (!m.specifier.startsWith(ROOT)) continue;
      const deps = (m.dependencies ?? []).map((d) => d.code?.specifier ?? "")
        .filter((s) => s.startsWith(ROOT)).map((s) => s.slice(ROOT.length));
      graph.set(m.specifier.slice(ROOT.length), deps);
    }
  }
  return graph;
}

/** Every import cycle, each as the path that closes it. */
function cycles(graph: Map<string, string[]>): string[][] {
  const found: string[][] = [];
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const visit = (m: string) => {
    state.set(m, "open");
    stack.push(m);
    for (const d of graph.get(m) ?? []) {
      if (state.get(d) === "open") found.push([...stack.slice(stack.indexOf(d)), d]);
      else if (!state.has(d)) visit(d);
    }
    stack.pop();
    state.set(m, "done");
  };
  for (const m of [...graph.keys()].sort()) if (!state.has(m)) visit(m);
  return found;
}

/**
 * Which top-level folders each library layer may import: the architecture in
 * one table (kernels < engine < infer < demo < train; cli is flag parsing).
 */
const MAY_IMPORT: Record<string, string[]> = {
  kernels: ["kernels"],
  engine: ["engine", "kernels"],
  cli: ["cli"],
  infer: ["infer", "engine", "kernels"],
  demo: ["demo", "infer", "engine", "kernels", "cli"],
  train: ["train", "demo", "infer", "engine", "kernels", "cli"],
};

/** Command-line entry points sit on top of their folder: they may also use the demo and flags. */
const ENTRY_POINTS_MAY_ALSO: Record<string, string[]> = {
  "infer/cli.ts": ["cli"],
  "infer/eval_cli.ts": ["cli", "demo"],
};

Deno.test("the import graph has no cycles", async () => {
  const found = cycles(await importGraph());
  assertEquals(found.map((c) => c.join(" -> ")), []);
});

Deno.test("each layer imports only the layers below it (kernels < engine < infer < demo < train)", async () => {
  const wrong: string[] = [];
  for (const [from, deps] of await importGraph()) {
    const layer = from.split("/")[0];
    if (!MAY_IMPORT[layer]) continue; // mod.ts, tests and benches see everything
    const allowed = [...MAY_IMPORT[layer], ...(ENTRY_POINTS_MAY_ALSO[from] ?? [])];
    for (const d of deps) {
      if (!allowed.includes(d.split("/")[0])) wrong.push(`${from} -> ${d}`);
    }
  }
  assertEquals(wrong, []);
});
