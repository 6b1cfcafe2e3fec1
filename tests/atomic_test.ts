/** Crash-safe files and directories (engine/atomic.ts). */
import { recoverDirectory } from "../engine/atomic.ts";
import { assertEquals } from "@std/assert";

Deno.test("recoverDirectory() falls back to the old copy when no complete new one exists", async () => {
  const dir = await Deno.makeTempDir({ prefix: "recover_" });
  await Deno.mkdir(`${dir}/ck.old-1-a`);
  await Deno.writeTextFile(`${dir}/ck.old-1-a/x`, "old");
  await Deno.mkdir(`${dir}/ck.tmp-1-b`); // incomplete: never used
  assertEquals(await recoverDirectory(`${dir}/ck`), `${dir}/ck.old-1-a`);
  assertEquals(await Deno.readTextFile(`${dir}/ck/x`), "old");
  const left = [];
  for await (const e of Deno.readDir(dir)) left.push(e.name);
  assertEquals(left, ["ck"]);
  await Deno.remove(dir, { recursive: true });
});
