/**
 * Models made on the GPU rather than loaded: random weights for a config
 * (tests, benchmarks, scale checks without a download), and a frozen copy of
 * a model (EM-RL's reference).
 * @module
 */
import { device } from "../device.ts";
import { fill, randomNormal } from "../ops/mod.ts";
import { keep } from "../scope.ts";
import { DTYPE_BYTES, Tensor } from "../tensor.ts";
import type { CausalLM, Parameter } from "./causal_lm.ts";
import { type DecoderConfig, decoderParameters } from "./config.ts";
import { DecoderLM } from "./decoder.ts";

/** A model with random weights (normal, std 0.02; norms 1) for a config. */
export function randomModel(
  config: DecoderConfig,
  options: { seed?: number; dtype?: "f32" | "bf16"; std?: number; trainable?: boolean } = {},
): DecoderLM {
  const dtype = options.dtype ?? "f32";
  const limit = device().info.maxStorageBufferBindingSize;
  let seed = options.seed ?? 0;
  const parameters: Parameter[] = decoderParameters(config).map(([name, shape]) => {
    if (shape.length === 1) {
      const isNorm = name.endsWith("norm.weight");
      const t = keep(
        isNorm ? fill(shape, 1) : randomNormal(shape, { seed: seed++, std: options.std ?? 0.02 }),
      );
      return { name, shape, chunks: [t] };
    }
    const [rows, cols] = shape;
    const per = Math.max(1, Math.floor(limit / (cols * DTYPE_BYTES[dtype])));
    const chunks: Tensor[] = [];
    for (let r = 0; r < rows; r += per) {
      const part = [Math.min(per, rows - r), cols];
      chunks.push(keep(randomNormal(part, { seed: seed++, std: options.std ?? 0.02, dtype })));
    }
    return { name, shape, chunks };
  });
  if (options.trainable) {
    if (dtype !== "f32") throw new Error("randomModel: trainable models must be f32");
    parameters.forEach((p) => p.chunks.forEach((t) => t.requiresGrad = true));
  }
  return new DecoderLM(config, parameters);
}

/**
 * A frozen copy of a model: the same config and tokenizer over copies of every
 * weight, sharing no writable buffer with it.
 */
export function frozenCopy(model: CausalLM): DecoderLM {
  const parameters = model.parameters.map((p) => ({
    name: p.name,
    shape: p.shape,
    chunks: p.chunks.map((t) => {
      const c = keep(Tensor.empty(t.shape, t.dtype));
      device().copy(t.buffer, 0, c.buffer, 0, t.byteLength);
      return c;
    }),
  }));
  return new DecoderLM(model.config, parameters, {
    tokenizer: model.tokenizer,
    generation: model.generation,
    sourceDir: model.sourceDir,
  });
}
