/**
 * Headless Chromium driven by puppeteer-core, for the tests that need a real
 * browser (reports, the WebGPU playground). CI installs Debian's chromium;
 * CHROMIUM names another binary.
 */
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import { exists } from "../engine/paths.ts";

export const CHROMIUM = Deno.env.get("CHROMIUM") ?? "/usr/bin/chromium";

/**
 * Browser tests run where chromium is installed, and are skipped elsewhere
 * (as the sandbox's are without bubblewrap); CI installs it and sets
 * EM_REQUIRE_BROWSER=1, so there a missing browser fails instead.
 */
export const browserTest = {
  ignore: !(await exists(CHROMIUM)) && !Deno.env.get("EM_REQUIRE_BROWSER"),
} as const;

/** Launches Chromium with WebGPU on, or throws saying what to install. */
export async function launchBrowser(): Promise<Browser> {
  try {
    await Deno.stat(CHROMIUM);
  } catch {
    throw new Error(
      `no browser at ${CHROMIUM}: install Debian's chromium (apt-get install chromium) or set CHROMIUM`,
    );
  }
  const userDataDir = await Deno.makeTempDir({ prefix: "chromium_" });
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir,
    args: [
      "--headless=new",
      "--no-sandbox",
      "--enable-unsafe-webgpu",
      // this machine's network is closed: no background connections
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
  browser.on("disconnected", () => Deno.remove(userDataDir, { recursive: true }).catch(() => {}));
  return browser;
}

/** A new page whose console errors and uncaught exceptions are collected. */
export async function openPage(
  browser: Browser,
  viewport = { width: 1280, height: 900 },
): Promise<{ page: Page; errors: string[] }> {
  const page = await browser.newPage();
  await page.setViewport(viewport);
  const errors: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  page.on("pageerror", (e) => errors.push(String(e)));
  return { page, errors };
}

/**
 * True when a PNG screenshot shows something: at least `minColors` distinct
 * colours among sampled pixels (a blank page has one).
 */
export async function screenshotShows(page: Page, minColors = 8): Promise<boolean> {
  const png = await page.screenshot({ type: "png", fullPage: false, encoding: "base64" });
  // decoded by the browser itself (the script is a string: no DOM types in Deno)
  return await page.evaluate(`(async () => {
    const img = new Image();
    img.src = "data:image/png;base64,${png}";
    await img.decode();
    const c = document.createElement("canvas");
    [c.width, c.height] = [img.width, img.height];
    const g = c.getContext("2d");
    g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    const colors = new Set();
    for (let i = 0; i < d.length; i += 4 * 97) colors.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    return colors.size >= ${minColors};
  })()`) as boolean;
}

/** Saves a screenshot to `EM_SCREENSHOTS/name` when that variable names a directory (README images). */
export async function maybeSaveScreenshot(page: Page, name: string): Promise<void> {
  const dir = Deno.env.get("EM_SCREENSHOTS");
  if (!dir) return;
  await Deno.mkdir(dir, { recursive: true });
  await page.screenshot({ type: "png", path: `${dir}/${name}`, fullPage: true });
}
