/** Throughput bookkeeping for `deno bench`: each bench records its own timing; a table prints at exit. */
import { initDevice } from "../engine/device.ts";

export const dev = await initDevice();

interface Row {
  name: string;
  amount: number; // work per iteration
  unit: "GFLOP/s" | "GB/s";
  best: number; // seconds
}
const rows = new Map<string, Row>();

/** Times `iteration` (which must end with the GPU idle) and records work/second. */
export async function timed(
  name: string,
  amount: number,
  unit: Row["unit"],
  iteration: () => Promise<void>,
) {
  const t0 = performance.now();
  await iteration();
  const s = (performance.now() - t0) / 1000;
  const r = rows.get(name);
  if (!r || s < r.best) rows.set(name, { name, amount, unit, best: s });
}

globalThis.addEventListener("unload", () => {
  if (rows.size === 0) return;
  console.log(`\nthroughput on ${dev.info.description} (best iteration):`);
  for (const r of rows.values()) {
    const rate = r.amount / r.best / 1e9;
    console.log(
      `  ${r.name.padEnd(44)} ${rate.toFixed(2).padStart(9)} ${r.unit}  (${
        (r.best * 1e3).toFixed(1)
      } ms)`,
    );
  }
});
