/** The Qwen tokenizer and chat template against the real tokenizer's outputs, and bad tokenizer files. */
import { loadTokenizer } from "../engine/model/checkpoint.ts";
import { assertEquals, assertRejects } from "@std/assert";

const TOK = new URL("./fixtures/qwen-tokenizer/", import.meta.url).pathname;

Deno.test("the Qwen tokenizer reproduces encode_cases.json (ids and decoded text)", async () => {
  const tok = await loadTokenizer(TOK);
  const cases = JSON.parse(await Deno.readTextFile(`${TOK}encode_cases.json`));
  for (const c of cases) {
    assertEquals(tok.encode(c.text), c.ids, `encode ${JSON.stringify(c.text)}`);
    assertEquals(tok.decode(c.ids), c.decoded, `decode ${JSON.stringify(c.text)}`);
  }
  assertEquals(tok.eosTokenIds, [151645]);
});

Deno.test("the chat template reproduces chat_cases.json (text and ids), enable_thinking included", async () => {
  const tok = await loadTokenizer(TOK);
  const cases = JSON.parse(await Deno.readTextFile(`${TOK}chat_cases.json`));
  for (const c of cases) {
    const text = tok.applyChatTemplate(c.messages, {
      addGenerationPrompt: c.add_generation_prompt,
      ...c.kwargs,
    });
    assertEquals(text, c.text);
    assertEquals(tok.encode(text), c.ids);
  }
});

Deno.test("loadTokenizer() names the file when tokenizer.json is not a tokenizer", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tok_bad_" });
  for (const text of ["{}", '{"model": 3}', "[]"]) {
    await Deno.writeTextFile(`${dir}/tokenizer.json`, text);
    await assertRejects(() => loadTokenizer(dir), Error, `${dir}/tokenizer.json: is not a`);
  }
  await Deno.remove(dir, { recursive: true });
});
