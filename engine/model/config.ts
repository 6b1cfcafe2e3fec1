/**
 * The decoder's configuration schema: what a family (qwen.ts) fills in from
 * its config.json, the names of its tensors, and what follows from a config
 * alone (parameter names and shapes, the linear layers' shapes), so that the
 * decoder, LoRA and the memory estimator derive them in one place.
 * @module
 */

/** A config.json problem, naming the file and the field. */
export class ConfigError extends Error {
  constructor(path: string, message: string) {
    super(`${path}: ${message}`);
    this.name = "ConfigError";
  }
}

/** The linear layers of a decoder layer, by short name (also LoRA's targets). */
export const LINEAR_LAYERS = ["q", "k", "v", "o", "gate", "up", "down"] as const;
export type LinearName = typeof LINEAR_LAYERS[number];

/** Checkpoint names of one layer's tensors (absent features: null). */
export interface LayerNames extends Record<LinearName, string> {
  inputNorm: string;
  postNorm: string;
  qBias: string | null;
  kBias: string | null;
  vBias: string | null;
  qNorm: string | null;
  kNorm: string | null;
}

/** How a family names its checkpoint tensors. */
export interface TensorNames {
  embed: string;
  finalNorm: string;
  lmHead: string;
  layer(i: number): LayerNames;
  /** The layer a checkpoint tensor belongs to, or null for a non-layer tensor. */
  layerOf(name: string): number | null;
}

/** The decoder's shape and features, filled in by a family from its config.json. */
export interface DecoderConfig {
  /** The architecture config.json names (e.g. Qwen2ForCausalLM). */
  architecture: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  ropeTheta: number;
  rmsNormEps: number;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections have biases. */
  attentionBias: boolean;
  /** Per-head RMSNorm of q and k before RoPE. */
  qkNorm: boolean;
  eosTokenIds: number[];
  bosTokenId: number | null;
  padTokenId: number | null;
  /** The family's tensor names. */
  names: TensorNames;
  /** The parsed config.json, kept to write it back on save. */
  raw: Record<string, unknown>;
}

/** Token ids of a config field that holds one id, a list of ids, or nothing. */
export function tokenIdList(v: unknown): number[] {
  if (v === null || v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).filter(Number.isInteger) as number[];
}

/** (out, in) features of every linear layer of a decoder layer: W is stored (out, in). */
export function linearShapes(c: DecoderConfig): Record<LinearName, [number, number]> {
  const [C, I] = [c.hiddenSize, c.intermediateSize];
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  return { q: [q, C], k: [kv, C], v: [kv, C], o: [C, q], gate: [I, C], up: [I, C], down: [C, I] };
}

/** Parameter names and shapes a config implies, in checkpoint order. */
export function decoderParameters(c: DecoderConfig): [string, number[]][] {
  const out: [string, number[]][] = [[c.names.embed, [c.vocabSize, c.hiddenSize]]];
  const shape = linearShapes(c);
  for (let i = 0; i < c.numLayers; i++) {
    const n = c.names.layer(i);
    out.push([n.inputNorm, [c.hiddenSize]]);
    for (const t of ["q", "k", "v"] as const) out.push([n[t], shape[t]]);
    if (c.attentionBias) {
      out.push([n.qBias!, [shape.q[0]]]);
      out.push([n.kBias!, [shape.k[0]]]);
      out.push([n.vBias!, [shape.v[0]]]);
    }
    if (c.qkNorm) {
      out.push([n.qNorm!, [c.headDim]]);
      out.push([n.kNorm!, [c.headDim]]);
    }
    out.push([n.o, shape.o]);
    out.push([n.postNorm, [c.hiddenSize]]);
    for (const t of ["gate", "up", "down"] as const) out.push([n[t], shape[t]]);
  }
  out.push([c.names.finalNorm, [c.hiddenSize]]);
  if (!c.tieWordEmbeddings) out.push([c.names.lmHead, [c.vocabSize, c.hiddenSize]]);
  return out;
}

/** Parameter count of a config. */
export function parameterCount(c: DecoderConfig): number {
  return decoderParameters(c).reduce((n, [, shape]) => n + shape.reduce((a, b) => a * b, 1), 0);
}
