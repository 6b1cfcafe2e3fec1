/**
 * The engine in the browser: the browser entry point's import graph holds no
 * Deno API, and the playground, in headless Chromium's WebGPU, generates the
 * tokens `generate` gives in Deno (greedy, and EM-INF for a seed), trains a
 * few EM-FT steps with its chart drawn, and logs no console error.
 */
import { assert, assertEquals } from "@std/assert";
import { loadModel } from "../engine/model/checkpoint.ts";
import { generate } from "../infer/generate.ts";
import { emInfProcessor } from "../infer/em_inf.ts";
import { buildWeb } from "../web/build.ts";
import { handler } from "../web/serve_cli.ts";
import {
  browserTest,
  launchBrowser,
  maybeSaveScreenshot,
  openPage,
  screenshotShows,
} from "./_browser.ts";
import { gpuTest } from "./_helpers.ts";
import type { Page } from "puppeteer-core";

const ROOT = new URL("../", import.meta.url);
const DEMO = new URL("../demo/model", import.meta.url).pathname;

/** An input element, as the page's callbacks see it. */
type Field = { value: string; checked: boolean };

interface InfoModule {
  specifier: string;
  dependencies?: { code?: { specifier: string }; isDynamic?: boolean }[];
}

Deno.test("the browser entry point's import graph (code, static) uses no Deno API", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", new URL("web/engine.ts", ROOT).pathname],
    stdout: "piped",
  }).output();
  const modules: InfoModule[] = JSON.parse(new TextDecoder().decode(out.stdout)).modules;
  const bySpecifier = new Map(modules.map((m) => [m.specifier, m]));
  const reached = new Set<string>();
  const dynamic: string[] = [];
  const stack = [new URL("web/engine.ts", ROOT).href];
  while (stack.length) {
    const s = stack.pop()!;
    if (reached.has(s) || !s.startsWith(ROOT.href)) continue;
    reached.add(s);
    for (const d of bySpecifier.get(s)?.dependencies ?? []) {
      if (!d.code) continue; // type-only: erased
      if (d.isDynamic) dynamic.push(d.code.specifier.slice(ROOT.href.length));
      else stack.push(d.code.specifier);
    }
  }
  const usesDeno: string[] = [];
  for (const s of reached) {
    const text = await Deno.readTextFile(new URL(s));
    if (/\bDeno\./.test(text.replace(/\/\/.*$|\/\*[\s\S]*?\*\//gm, ""))) {
      usesDeno.push(s.slice(ROOT.href.length));
    }
  }
  assert(reached.size > 40, `walked ${reached.size} modules`);
  assertEquals(usesDeno, []);
  // the one dynamic import: Deno's backend choice, taken only when `Deno` exists
  assertEquals(dynamic, ["engine/backend_deno.ts"]);
});

async function waitFor(page: Page, expr: string, timeout: number): Promise<void> {
  await page.waitForFunction(expr, { timeout, polling: 200 });
}

async function generateInPage(
  page: Page,
  o: { prompt: string; greedy: boolean; emInf: boolean; seed: number },
): Promise<number[]> {
  await page.$eval("#prompt", (e, v) => (e as unknown as Field).value = v, o.prompt);
  await page.$eval("#seed", (e, v) => (e as unknown as Field).value = String(v), o.seed);
  await page.$eval("#temperature", (e) => (e as unknown as Field).value = "1");
  for (
    const [id, on] of [["greedy", o.greedy], ["em-inf", o.emInf], ["adaptive", false]] as const
  ) {
    await page.$eval(`#${id}`, (e, v) => (e as unknown as Field).checked = v, on);
  }
  await page.click("#generate");
  await waitFor(page, `document.getElementById("output").dataset.done === "true"`, 60_000);
  return await page.evaluate("window.playground.lastIds") as number[];
}

Deno.test({
  name:
    "the playground in Chromium's WebGPU: Deno's greedy and EM-INF tokens, EM-FT steps, no console error",
  ...gpuTest,
  ...browserTest,
  fn: async () => {
    await buildWeb();
    const bundle = await Deno.readTextFile(new URL("web/dist/engine.js", ROOT));
    assert(!/\bDeno\./.test(bundle), "the browser bundle calls no Deno API");
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      handler(DEMO),
    );
    const model = await loadModel(DEMO);
    const tok = model.tokenizer!;
    const browser = await launchBrowser();
    try {
      const { page, errors } = await openPage(browser);
      await page.goto(`http://127.0.0.1:${server.addr.port}/`);
      await waitFor(page, "window.playground?.ready || window.playground?.error", 120_000);
      assertEquals(await page.evaluate("window.playground.error"), null);
      const adapter = await page.$eval("#adapter", (e) => e.textContent ?? "");
      assert(adapter.length > 0 && adapter !== "…", `the page reports its adapter: "${adapter}"`);
      for (const prompt of ["537+268=", "91*47="]) {
        const inPage = await generateInPage(page, { prompt, greedy: true, emInf: false, seed: 0 });
        const deno = await generate(model, [tok.encode(prompt)], { greedy: true, maxNewTokens: 5 });
        assertEquals(inPage, deno.tokens[0], `greedy, ${prompt}`);
      }
      for (const seed of [3, 11]) {
        const prompt = "804-379=";
        const inPage = await generateInPage(page, { prompt, greedy: false, emInf: true, seed });
        const deno = await generate(model, [tok.encode(prompt)], {
          temperature: 1,
          maxNewTokens: 5,
          seed,
          logitsProcessor: emInfProcessor(),
        });
        assertEquals(inPage, deno.tokens[0], `EM-INF, seed ${seed}`);
      }
      // entropy colours on every token
      const coloured = await page.$$eval(
        ".token",
        (t) =>
          t.filter((s) => (s as unknown as { style: { background: string } }).style.background)
            .length,
      );
      assert(coloured > 0);
      await page.$eval("#train-steps", (e) => (e as unknown as Field).value = "2");
      await page.click("#train-button");
      await waitFor(page, `document.getElementById("train").dataset.done === "true"`, 300_000);
      const training = await page.evaluate("window.playground.training") as { entropy: number }[];
      assertEquals(training.length, 2);
      assert(training.every((s) => Number.isFinite(s.entropy) && s.entropy > 0));
      const marks = await page.$$eval("#chart svg .mark-line path", (p) => p.length);
      assert(marks > 0, "the EM-FT chart is drawn");
      const acc = await page.evaluate("window.playground.accuracy") as Record<string, number>;
      assert(acc.before >= 0 && acc.after >= 0, JSON.stringify(acc));
      assert(await screenshotShows(page));
      await maybeSaveScreenshot(page, "playground.png");
      assertEquals(await page.evaluate("window.playground.error"), null);
      assertEquals(errors, []);
    } finally {
      await browser.close();
      model.dispose();
      await server.shutdown();
    }
  },
});
