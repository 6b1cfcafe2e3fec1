/**
 * The import graph stays layered: no module imports itself through others
 * (a cycle, type-only imports included), and each layer imports only what
 * lies below it. Read from `deno info --json` over every source file, so a
 * new violation fails here with its path.
 */
import { assertEquals } from "@std/assert";

const ROOT = new URL("../", import.meta.url).href;
const SOURCE_DIRS = ["engine", "kernels", "report", "infer", "train", "demo", "cli", "web"];

interface Info {
  modules: {
    specifier: string;
    dependencies?: { code?: { specifier: string }; type?: { specifier: string } }[];
  }[];
}

/** Every .ts file under the source folders, and mod.ts. */
async function sources(): Promise<string[]> {
  const out = ["mod.ts"];
  const walk = async (dir: string) => {
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(new URL(dir, ROOT)));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      throw e;
    }
    for (const e of entries) {
      if (e.isDirectory) await walk(`${dir}/${e.name}`);
      else if (e.name.endsWith(".ts")) out.push(`${dir}/${e.name}`);
    }
  };
  for (const d of SOURCE_DIRS) await walk(d);
  return out.sort();
}

/** Local module -> the local modules it imports, code and type-only (paths relative to the repository). */
async function importGraph(): Promise<Map<string, string[]>> {
  // one `deno info` over a module that imports every source file
  const all = await Deno.makeTempFile({ suffix: ".ts" });
  await Deno.writeTextFile(
    all,
    (await sources()).map((f) => `import "${new URL(f, ROOT).href}";`).join("\n"),
  );
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", all],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
    const info: Info = JSON.parse(new TextDecoder().decode(out.stdout));
    const graph = new Map<string, string[]>();
    for (const m of info.modules) {
      if (!m.specifier.startsWith(ROOT)) continue;
      const deps = (m.dependencies ?? [])
        .flatMap((d) => [d.code?.specifier, d.type?.specifier])
        .filter((s): s is string => !!s && s.startsWith(ROOT))
        .map((s) => s.slice(ROOT.length));
      graph.set(m.specifier.slice(ROOT.length), [...new Set(deps)]);
    }
    return graph;
  } finally {
    await Deno.remove(all);
  }
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
 * Which top-level folders each layer may import: the architecture in one
 * table. The library is kernels < engine < infer < train, with report/
 * (charts of runs and evaluations) beside engine; the demo and the
 * browser page are applications on top of it; cli/ is flag parsing.
 */
const MAY_IMPORT: Record<string, string[]> = {
  kernels: ["kernels"],
  engine: ["engine", "kernels"],
  report: ["report", "engine"],
  infer: ["infer", "report", "engine", "kernels"],
  train: ["train", "infer", "report", "engine", "kernels"],
  demo: ["demo", "train", "infer", "report", "engine", "kernels", "cli"],
  web: ["web", "demo", "train", "infer", "report", "engine", "kernels"],
  cli: ["cli"],
};

/** Command-line modules (cli.ts, cli_*.ts, *_cli.ts) sit on top: they may also use flags and the demo. */
const isCommandLine = (path: string) => /(^|\/)(cli(_[a-z_]+)?|[a-z_]+_cli)\.ts$/.test(path);

Deno.test("the import graph has no cycles, type-only imports included", async () => {
  const found = cycles(await importGraph());
  assertEquals(found.map((c) => c.join(" -> ")), []);
});

Deno.test("each layer imports only the layers below it (kernels < engine < infer < train < demo)", async () => {
  const wrong: string[] = [];
  for (const [from, deps] of await importGraph()) {
    const layer = from.split("/")[0];
    if (!MAY_IMPORT[layer]) continue; // mod.ts sees the library
    const allowed = [...MAY_IMPORT[layer], ...(isCommandLine(from) ? ["cli", "demo"] : [])];
    for (const d of deps) {
      if (!allowed.includes(d.split("/")[0])) wrong.push(`${from} -> ${d}`);
    }
  }
  assertEquals(wrong, []);
});

Deno.test("the layering rules can fail: a cycle and an upward import are found", () => {
  const graph = new Map([["a.ts", ["b.ts"]], ["b.ts", ["a.ts"]], ["c.ts", []]]);
  assertEquals(cycles(graph).map((c) => c.join(" -> ")), ["a.ts -> b.ts -> a.ts"]);
  assertEquals(isCommandLine("train/cli.ts"), true);
  assertEquals(isCommandLine("train/cli_setup.ts"), true);
  assertEquals(isCommandLine("infer/eval_cli.ts"), true);
  assertEquals(isCommandLine("train/data.ts"), false);
  assertEquals(MAY_IMPORT.train.includes("demo"), false);
});

Deno.test("mod.ts, the library's entry, imports no application (demo) or command-line module", async () => {
  const graph = await importGraph();
  const reached = new Set<string>();
  const stack = ["mod.ts"];
  while (stack.length) {
    const m = stack.pop()!;
    if (reached.has(m)) continue;
    reached.add(m);
    stack.push(...(graph.get(m) ?? []));
  }
  assertEquals(
    [...reached].filter((m) => m.startsWith("demo/") || m.startsWith("cli/") || isCommandLine(m)),
    [],
  );
});
