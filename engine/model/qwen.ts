/**
 * The Qwen family (Qwen2, Qwen2.5, Qwen3) mapped onto the generic decoder:
 * its config.json fields, validated (features we do not implement are refused
 * naming the field, never silently ignored), and its tensor names. A new
 * family (Llama, Mistral) is one file like this one, listed in FAMILIES of
 * checkpoint.ts.
 * @module
 */
import { ConfigError, type DecoderConfig, type TensorNames, tokenIdList } from "./config.ts";

export { ConfigError };

export type QwenArchitecture = "Qwen2ForCausalLM" | "Qwen3ForCausalLM";

/** Hugging Face's Llama-style names, which Qwen2 and Qwen3 checkpoints use. */
export const QWEN_NAMES: TensorNames = {
  embed: "model.embed_tokens.weight",
  finalNorm: "model.norm.weight",
  lmHead: "lm_head.weight",
  layer: (i) => {
    const p = `model.layers.${i}`;
    return {
      inputNorm: `${p}.input_layernorm.weight`,
      postNorm: `${p}.post_attention_layernorm.weight`,
      q: `${p}.self_attn.q_proj.weight`,
      k: `${p}.self_attn.k_proj.weight`,
      v: `${p}.self_attn.v_proj.weight`,
      o: `${p}.self_attn.o_proj.weight`,
      qBias: `${p}.self_attn.q_proj.bias`,
      kBias: `${p}.self_attn.k_proj.bias`,
      vBias: `${p}.self_attn.v_proj.bias`,
      qNorm: `${p}.self_attn.q_norm.weight`,
      kNorm: `${p}.self_attn.k_norm.weight`,
      gate: `${p}.mlp.gate_proj.weight`,
      up: `${p}.mlp.up_proj.weight`,
      down: `${p}.mlp.down_proj.weight`,
    };
  },
  layerOf: (name) => {
    const m = /^model\.layers\.(\d+)\./.exec(name);
    return m ? Number(m[1]) : null;
  },
};

/** A Qwen config on the decoder. */
export interface QwenConfig extends DecoderConfig {
  architecture: QwenArchitecture;
}

/** Parses a config.json object; `path` names it in errors. */
export function parseQwenConfig(raw: Record<string, unknown>, path = "config.json"): QwenConfig {
  const arch = (raw.architectures as string[] | undefined)?.[0] ??
    (raw.model_type === "qwen3"
      ? "Qwen3ForCausalLM"
      : raw.model_type === "qwen2"
      ? "Qwen2ForCausalLM"
      : undefined);
  if (arch !== "Qwen2ForCausalLM" && arch !== "Qwen3ForCausalLM") {
    throw new ConfigError(
      path,
      `architectures: ${
        JSON.stringify(raw.architectures ?? raw.model_type)
      } is not supported (Qwen2ForCausalLM or Qwen3ForCausalLM)`,
    );
  }
  const int = (field: string, fallback?: number): number => {
    const v = raw[field] ?? fallback;
    if (!Number.isInteger(v) || (v as number) <= 0) {
      throw new ConfigError(
        path,
        `${field} must be a positive integer, got ${JSON.stringify(raw[field])}`,
      );
    }
    return v as number;
  };
  const num = (field: string, v: unknown): number => {
    if (typeof v !== "number" || !(v > 0)) {
      throw new ConfigError(path, `${field} must be a positive number, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const hiddenSize = int("hidden_size");
  const numHeads = int("num_attention_heads");
  const numKvHeads = int("num_key_value_heads", numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new ConfigError(
      path,
      `num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads})`,
    );
  }
  const headDim = raw.head_dim == null ? hiddenSize / numHeads : int("head_dim");
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new ConfigError(path, `head_dim ${headDim} must be an even integer`);
  }
  // rope: top-level rope_theta (older checkpoints) or rope_parameters (transformers 5)
  const ropeParams = (raw.rope_parameters ?? raw.rope_scaling ?? null) as
    | Record<string, unknown>
    | null;
  const ropeType = ropeParams?.rope_type ?? ropeParams?.type ?? "default";
  if (ropeType !== "default") {
    const field = raw.rope_parameters ? "rope_parameters.rope_type" : "rope_scaling.type";
    throw new ConfigError(path, `${field} "${ropeType}" is not implemented (only default RoPE)`);
  }
  const ropeTheta = num(
    raw.rope_theta !== undefined ? "rope_theta" : "rope_parameters.rope_theta",
    raw.rope_theta ?? ropeParams?.rope_theta ?? 10000,
  );
  const numLayers = int("num_hidden_layers");
  const maxPositionEmbeddings = int("max_position_embeddings", 32768);
  // Sliding-window attention only matters when enabled and shorter than the context.
  if (raw.use_sliding_window === true) {
    const window = raw.sliding_window as number | null;
    const maxWindowLayers = (raw.max_window_layers as number | undefined) ?? numLayers;
    if (window != null && window < maxPositionEmbeddings && maxWindowLayers < numLayers) {
      throw new ConfigError(
        path,
        `use_sliding_window is true with sliding_window ${window} on layers >= max_window_layers ${maxWindowLayers}: sliding-window attention is not implemented`,
      );
    }
  }
  const layerTypes = raw.layer_types as string[] | undefined;
  if (layerTypes?.some((t) => t !== "full_attention")) {
    throw new ConfigError(
      path,
      `layer_types contains ${
        layerTypes.find((t) => t !== "full_attention")
      }: only full_attention is implemented`,
    );
  }
  if (raw.hidden_act !== undefined && raw.hidden_act !== "silu") {
    throw new ConfigError(path, `hidden_act "${raw.hidden_act}" is not supported (silu)`);
  }
  const isQwen3 = arch === "Qwen3ForCausalLM";
  return {
    architecture: arch,
    vocabSize: int("vocab_size"),
    hiddenSize,
    intermediateSize: int("intermediate_size"),
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    ropeTheta,
    rmsNormEps: num("rms_norm_eps", raw.rms_norm_eps ?? 1e-6),
    maxPositionEmbeddings,
    tieWordEmbeddings: raw.tie_word_embeddings !== false,
    attentionBias: isQwen3 ? raw.attention_bias === true : true,
    qkNorm: isQwen3,
    names: QWEN_NAMES,
    eosTokenIds: tokenIdList(raw.eos_token_id),
    bosTokenId: Number.isInteger(raw.bos_token_id) ? raw.bos_token_id as number : null,
    padTokenId: Number.isInteger(raw.pad_token_id) ? raw.pad_token_id as number : null,
    raw,
  };
}

/** Whether a config.json is this family's. */
export function isQwenConfig(raw: Record<string, unknown>): boolean {
  const arch = (raw.architectures as string[] | undefined)?.[0];
  return arch === "Qwen2ForCausalLM" || arch === "Qwen3ForCausalLM" ||
    (arch === undefined && (raw.model_type === "qwen2" || raw.model_type === "qwen3"));
}
