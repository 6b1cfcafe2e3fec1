/**
 * A model's linear layers quantized after loading (a random model for a
 * benchmark, or any model in memory): each decoder layer's linear weight is
 * read back, quantized on the CPU and uploaded packed; every other tensor is
 * copied. The result shares no buffer with the source.
 * @module
 */
import { device } from "../device.ts";
import type { CausalLM, Parameter } from "../model/causal_lm.ts";
import { LINEAR_LAYERS } from "../model/config.ts";
import { DecoderLM } from "../model/decoder.ts";
import { toFloat32 } from "../safetensors_format.ts";
import { keep } from "../scope.ts";
import { Tensor } from "../tensor.ts";
import { tensorsToRaw } from "../tensor_io.ts";
import { layoutProblem, quantizeMatrix, type QuantScheme } from "./format.ts";
import { QuantizedWeight } from "./weight.ts";

export async function quantizeModel(model: CausalLM, scheme: QuantScheme): Promise<DecoderLM> {
  const c = model.config;
  const linears = new Set(
    Array.from({ length: c.numLayers }, (_, i) => c.names.layer(i))
      .flatMap((n) => LINEAR_LAYERS.map((t) => n[t])),
  );
  const parameters: Parameter[] = [];
  for (const p of model.parameters) {
    const [rows, cols] = p.shape;
    if (!p.quant && linears.has(p.name) && !layoutProblem(cols, scheme.groupSize || cols)) {
      const raws = await tensorsToRaw(p.chunks);
      const w = new Float32Array(rows * cols);
      let at = 0;
      for (const r of raws) {
        const f = toFloat32(r);
        w.set(f, at);
        at += f.length;
      }
      const quant = QuantizedWeight.upload(quantizeMatrix(w, rows, cols, scheme));
      quant.tensors().forEach((t) => keep(t));
      parameters.push({ name: p.name, shape: p.shape, chunks: quant.tensors(), quant });
      continue;
    }
    if (p.quant) throw new Error(`quantizeModel: ${p.name} is quantized already`);
    const chunks = p.chunks.map((t) => {
      const copy = keep(Tensor.empty(t.shape, t.dtype));
      device().copy(t.buffer, 0, copy.buffer, 0, t.byteLength);
      return copy;
    });
    parameters.push({ name: p.name, shape: p.shape, chunks });
  }
  return new DecoderLM(c, parameters, {
    tokenizer: model.tokenizer,
    generation: model.generation,
    sourceDir: model.sourceDir,
  });
}
