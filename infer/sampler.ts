/**
 * Where responses are sampled from: this process's model (generate()), or
 * servers speaking OpenAI's protocol (train/rollout_servers.ts). A trainer's
 * rollouts and validation go through a Sampler, so the same loop runs on one
 * GPU or on a fleet of inference servers.
 * @module
 */
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { generate } from "./generate.ts";

export interface SampleRequest {
  /** Token ids of each prompt. */
  prompts: number[][];
  /** Responses per prompt. */
  n: number;
  maxNewTokens: number;
  temperature: number;
  topP: number;
  greedy?: boolean;
  seed: number;
  eosTokenIds: number[];
  padTokenId: number;
  /** Abandons the request (a trainer stopping while rollouts are in flight). */
  signal?: AbortSignal;
}

export interface Sampled {
  /** Response token ids, prompt-major: prompt i's responses at [i * n, (i + 1) * n). */
  tokens: number[][];
  /** Where the sampler reports them: each token's log-prob under the distribution it was drawn from. */
  logprobs?: number[][];
}

export type Sampler = (r: SampleRequest) => Promise<Sampled>;

/** Sampling from a model in this process: every prompt repeated n times, decoded together. */
export function localSampler(model: CausalLM): Sampler {
  return async (r) => {
    const repeated = r.prompts.flatMap((p) => Array.from({ length: r.n }, () => p));
    const out = await generate(model, repeated, {
      maxNewTokens: r.maxNewTokens,
      temperature: r.temperature,
      topP: r.topP,
      greedy: r.greedy,
      seed: r.seed,
      eosTokenIds: r.eosTokenIds,
      padTokenId: r.padTokenId,
    });
    return { tokens: out.tokens };
  };
}
