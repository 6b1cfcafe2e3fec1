/**
 * What a rollout server's OpenAI-style completion must hold for training:
 * every requested choice, the sampled token ids (vLLM's `return_token_ids`)
 * and one log-prob per token.
 * @module
 */
import type { SampleRequest } from "../infer/sampler.ts";
import { RolloutError } from "./rollout_error.ts";

/**
 * A completion's choices, checked: n of them, each with token ids in the
 * vocabulary (`vocabSize`) and log-probs; errors name the server `url`.
 */
export function parseCompletion(
  url: string,
  vocabSize: number,
  text: string,
  r: Pick<SampleRequest, "n" | "maxNewTokens">,
): { tokens: number[][]; logprobs: number[][] } {
  const bad = (why: string) =>
    new RolloutError(`rollout server ${url} sent a malformed completion: ${why}`);
  let body: { choices?: unknown };
  try {
    body = JSON.parse(text);
  } catch {
    throw bad(`not JSON: ${text.slice(0, 120)}`);
  }
  const choices = body?.choices;
  if (!Array.isArray(choices) || choices.length !== r.n) {
    throw bad(
      `${Array.isArray(choices) ? choices.length : "no"} choices where n = ${r.n} were asked for`,
    );
  }
  const tokens: number[][] = new Array(r.n);
  const logprobs: number[][] = new Array(r.n);
  for (const [k, c] of choices.entries()) {
    const i = typeof c?.index === "number" ? c.index : k;
    const ids = c?.token_ids;
    if (!Array.isArray(ids)) {
      throw bad(
        `choice ${i} has no token_ids (the server must support "return_token_ids": vLLM >= 0.10.2, or deno task serve)`,
      );
    }
    const wrong = ids.find((t) => !Number.isInteger(t) || t < 0 || t >= vocabSize);
    if (wrong !== undefined) {
      throw bad(
        `choice ${i}: token id ${wrong} is outside the vocabulary (0..${vocabSize - 1})`,
      );
    }
    if (ids.length > r.maxNewTokens) {
      throw bad(`choice ${i} has ${ids.length} tokens, more than max_tokens ${r.maxNewTokens}`);
    }
    const lp = c?.logprobs?.token_logprobs;
    if (!Array.isArray(lp) || lp.length !== ids.length || lp.some((x) => typeof x !== "number")) {
      throw bad(`choice ${i}: logprobs.token_logprobs is missing or not one number per token`);
    }
    if (i < 0 || i >= r.n || tokens[i]) {
      throw bad(`choice index ${i} is repeated or out of range`);
    }
    tokens[i] = ids;
    logprobs[i] = lp;
  }
  return { tokens, logprobs };
}
