/**
 * Evaluation during training on the user's own held-out problems
 * (--eval-data): greedy accuracy, the score that picks the best checkpoint,
 * watches for a collapse and stops at a target. Prompts are rendered as the
 * training prompts are; answers are the last \boxed{} or else the last number.
 * @module
 */
import { readJsonlFile } from "../engine/jsonl.ts";
import type { CausalLM } from "../engine/model/causal_lm.ts";
import { answersMatch, extractAnswer } from "../infer/answer.ts";
import { localSampler, type Sampler } from "../infer/sampler.ts";
import { checkEncodable, encodePrompt, type Example } from "./data.ts";

/** Reads `{"prompt" (or "problem"): ..., "answer": ...}` lines; errors name FILE:LINE. */
export async function readEvalData(path: string): Promise<{ problems: Example[]; sha256: string }> {
  const { records, sha256 } = await readJsonlFile(path, (o) => {
    const prompt = o.prompt ?? o.problem;
    if (typeof prompt !== "string" || !prompt) {
      return `"prompt" (or "problem") must be a non-empty string`;
    }
    if (typeof o.answer !== "string" && typeof o.answer !== "number") {
      return `"answer" must be a string or number (evaluation compares with it)`;
    }
    return null;
  });
  const problems = records.map(({ value: o, origin }) => ({
    prompt: (o.prompt ?? o.problem) as string,
    answer: String(o.answer),
    origin,
  }));
  return { problems, sha256 };
}

/**
 * The evaluation hook of `train()` on these problems: greedy accuracy
 * (`score`), its mean response length, and `stop` once accuracy reaches `target`.
 */
export function problemValidation(
  problems: Example[],
  o: {
    chat: boolean;
    maxNewTokens: number;
    batchSize: number;
    target: number | null;
    /** Decode there instead of in this process (e.g. the rollout servers). */
    sampler?: Sampler;
  },
): (model: CausalLM) => Promise<Record<string, number>> {
  return async (model) => {
    const tok = model.tokenizer!;
    const sample = o.sampler ?? localSampler(model);
    const eos = model.generation.eosTokenIds;
    let correct = 0;
    let tokens = 0;
    for (let i = 0; i < problems.length; i += o.batchSize) {
      const part = problems.slice(i, i + o.batchSize);
      const r = await sample({
        prompts: part.map((p) => encodePrompt(tok, p.prompt, o.chat)),
        n: 1,
        greedy: true,
        maxNewTokens: o.maxNewTokens,
        temperature: 1,
        topP: 1,
        seed: 0,
        eosTokenIds: eos,
        padTokenId: model.generation.padTokenId ?? eos[0] ?? 0,
      });
      r.tokens.forEach((ids, k) => {
        tokens += ids.length;
        const text = tok.decode(ids, { skipSpecialTokens: true });
        if (answersMatch(extractAnswer(text, "auto"), part[k].answer!)) correct++;
      });
    }
    const accuracy = correct / problems.length;
    const out: Record<string, number> = {
      greedyAccuracy: accuracy,
      responseLength: tokens / problems.length,
      score: accuracy,
    };
    if (o.target !== null && accuracy >= o.target) out.stop = 1;
    return out;
  };
}

/** Checks every problem against the model before step 1 (encodable, fits the context). */
export function checkEvalData(
  model: CausalLM,
  problems: Example[],
  o: { chat: boolean; maxNewTokens: number },
): void {
  const tok = model.tokenizer!;
  const max = model.config.maxPositionEmbeddings;
  for (const p of problems) {
    checkEncodable(tok, p.prompt, p.origin!);
    const n = encodePrompt(tok, p.prompt, o.chat).length;
    if (n + o.maxNewTokens > max) {
      throw new Error(
        `${p.origin}: the prompt (${n} tokens) plus --max-new-tokens ${o.maxNewTokens} exceed the model's max_position_embeddings (${max})`,
      );
    }
  }
}
