/**
 * The per-step cost of EM-INF against plain sampling at a real vocabulary:
 * 16 rows of 151936 logits (a decoding step of a batch of 16 on Qwen).
 */
import { emInfAdjust } from "../infer/em_inf.ts";
import { adaptiveTemperature } from "../infer/baselines.ts";
import { sampleTokens } from "../infer/sampling.ts";
import { randomNormal } from "../engine/ops/mod.ts";
import { dev, timed } from "./_util.ts";

const ROWS = 16;
const V = 151936;
const bytes = ROWS * V * 4;
const logits = randomNormal([ROWS, V], { seed: 1, std: 2 });
const u = Array.from({ length: ROWS }, (_, i) => (i + 0.5) / ROWS);

function bench(name: string, step: () => void) {
  Deno.bench({
    name,
    group: "decode step",
    n: 3,
    warmup: 1,
    async fn(b) {
      await dev.sync();
      b.start();
      await timed(name, bytes, "GB/s", async () => {
        step();
        await dev.sync();
      });
      b.end();
    },
  });
}

bench(
  `sample only (${ROWS}x${V}, T=1, top-p 0.9)`,
  () => sampleTokens(logits, { topP: 0.9 }, u).dispose(),
);
bench(`EM-INF 5 steps + sample (${ROWS}x${V})`, () => {
  const z = emInfAdjust(logits, { steps: 5, threshold: 0 });
  sampleTokens(z, { topP: 0.9 }, u).dispose();
  z.dispose();
});
bench(`adaptive temperature + sample (${ROWS}x${V})`, () => {
  const r = adaptiveTemperature(logits);
  sampleTokens(r.logits, { topP: 0.9 }, u).dispose();
  r.logits.dispose();
  r.tau.dispose();
});
