/**
 * LoRA adapters on the decoder's linear layers, in Hugging Face PEFT's format:
 * y = x·Wᵀ + (alpha / r)·(x·Aᵀ)·Bᵀ with A (r, in) and B (out, r). The base
 * weights stay frozen in their stored precision (bf16 stays bf16, no f32 copy,
 * no gradient, no optimizer state); only A and B train. Saved as
 * adapter_model.safetensors (PEFT's tensor names) and adapter_config.json, so
 * `PeftModel.from_pretrained(base, dir)` loads them.
 * @module
 */
import { atomicWriteText } from "../atomic.ts";
import { readSafetensors, writeSafetensors } from "../safetensors.ts";
import { tensorFromRaw } from "../tensor_io.ts";
import { device } from "../device.ts";
import { keep } from "../scope.ts";
import { Tensor } from "../tensor.ts";
import { type DecoderConfig, LINEAR_LAYERS, type LinearName, linearShapes } from "./config.ts";

/** The linear layers LoRA can adapt, by their short names. */
export const LORA_TARGETS = LINEAR_LAYERS;
export type LoraTarget = LinearName;

export interface LoraOptions {
  rank: number;
  alpha: number;
  targets: LoraTarget[];
  seed?: number;
}

export { type Adapter, loraTerm, withLora } from "./lora_term.ts";
import type { Adapter } from "./lora_term.ts";

/** The PEFT module path of a weight: "model.layers.0.self_attn.q_proj.weight" -> "...q_proj". */
function modulePath(weightName: string): string {
  return weightName.replace(/\.weight$/, "");
}

/** A model's adapters, keyed by the adapted weight's name. */
export class LoraAdapters {
  readonly options: LoraOptions;
  readonly byWeight: Map<string, Adapter>;

  constructor(options: LoraOptions, byWeight: Map<string, Adapter>) {
    this.options = options;
    this.byWeight = byWeight;
  }

  /**
   * New adapters for `config`'s layers: A uniform in ±1/sqrt(in) (PEFT's
   * kaiming_uniform with a = sqrt(5)), B zero, so the model starts unchanged.
   */
  static create(config: DecoderConfig, options: LoraOptions): LoraAdapters {
    const { rank, alpha, targets } = options;
    if (!Number.isInteger(rank) || rank < 1) {
      throw new Error(`LoRA: rank must be >= 1, got ${rank}`);
    }
    let seed = options.seed ?? 0;
    const map = new Map<string, Adapter>();
    for (let i = 0; i < config.numLayers; i++) {
      const names = config.names.layer(i);
      for (const t of targets) {
        const [out, inF] = linearShapes(config)[t];
        const bound = 1 / Math.sqrt(inF);
        const A = keep(Tensor.rand([rank, inF], { seed: seed++, low: -bound, high: bound }));
        const B = keep(Tensor.zeros([out, rank]));
        A.requiresGrad = true;
        B.requiresGrad = true;
        map.set(names[t], { A, B, scale: alpha / rank });
      }
    }
    return new LoraAdapters(options, map);
  }

  /** Every trainable tensor (A and B of each adapter). */
  tensors(): Tensor[] {
    return [...this.byWeight.values()].flatMap((a) => [a.A, a.B]);
  }

  /** Writes adapter_model.safetensors and adapter_config.json (PEFT's format) into `dir`. */
  async save(dir: string, baseModel: string | null): Promise<void> {
    await Deno.mkdir(dir, { recursive: true });
    const tensors = new Map<string, { dtype: "F32"; shape: number[]; data: Uint8Array }>();
    const all = [...this.byWeight].flatMap(([weight, a]) =>
      ([["lora_A", a.A], ["lora_B", a.B]] as const).map(([kind, t]) => ({
        name: `base_model.model.${modulePath(weight)}.${kind}.weight`,
        t,
      }))
    );
    // one readback for all of them (each read waits about 11 ms in Deno)
    const bytes = await device().readMany(
      all.map(({ t }) => ({ buffer: t.buffer, bytes: 4 * t.size })),
    );
    all.forEach(({ name, t }, i) =>
      tensors.set(name, { dtype: "F32", shape: [...t.shape], data: new Uint8Array(bytes[i]) })
    );
    await writeSafetensors(`${dir}/adapter_model.safetensors`, tensors, { format: "pt" });
    const modules = [
      ...new Set([...this.byWeight.keys()].map((w) => modulePath(w).split(".").at(-1)!)),
    ];
    const config = {
      peft_type: "LORA",
      task_type: "CAUSAL_LM",
      base_model_name_or_path: baseModel,
      r: this.options.rank,
      lora_alpha: this.options.alpha,
      lora_dropout: 0,
      target_modules: modules,
      bias: "none",
      fan_in_fan_out: false,
      inference_mode: true,
      init_lora_weights: true,
      modules_to_save: null,
      use_rslora: false,
      use_dora: false,
    };
    await atomicWriteText(`${dir}/adapter_config.json`, JSON.stringify(config, null, 2) + "\n");
  }

  /** Reads adapters saved by `save` (or by PEFT) for `config`'s model. */
  static async load(dir: string, config: DecoderConfig): Promise<LoraAdapters> {
    const path = `${dir}/adapter_config.json`;
    let raw: Record<string, unknown>;
    try {
      raw = JSON.parse(await Deno.readTextFile(path));
    } catch (e) {
      throw new Error(`${path}: cannot read LoRA adapters (${(e as Error).message})`);
    }
    if (raw.peft_type !== "LORA") {
      throw new Error(`${path}: peft_type is ${raw.peft_type}, not LORA`);
    }
    const rank = raw.r as number;
    const alpha = raw.lora_alpha as number;
    const { tensors } = await readSafetensors(`${dir}/adapter_model.safetensors`);
    const map = new Map<string, Adapter>();
    const targets = new Set<LoraTarget>();
    for (let i = 0; i < config.numLayers; i++) {
      const names = config.names.layer(i);
      for (const t of LORA_TARGETS) {
        const weight = names[t];
        const prefix = `base_model.model.${modulePath(weight)}`;
        const a = tensors.get(`${prefix}.lora_A.weight`);
        const b = tensors.get(`${prefix}.lora_B.weight`);
        if (!a || !b) continue;
        const [out, inF] = linearShapes(config)[t];
        if (a.shape.join() !== [rank, inF].join() || b.shape.join() !== [out, rank].join()) {
          throw new Error(
            `${dir}/adapter_model.safetensors: ${prefix} has A [${a.shape}] and B [${b.shape}], expected [${rank},${inF}] and [${out},${rank}]`,
          );
        }
        const A = keep(tensorFromRaw(a));
        const B = keep(tensorFromRaw(b));
        A.requiresGrad = B.requiresGrad = true;
        map.set(weight, { A, B, scale: alpha / rank });
        targets.add(t);
      }
    }
    if (map.size === 0) {
      throw new Error(`${dir}/adapter_model.safetensors: no LoRA tensors for this model`);
    }
    return new LoraAdapters({ rank, alpha, targets: [...targets] }, map);
  }

  dispose(): void {
    this.tensors().forEach((t) => t.dispose());
  }
}

/** Parses "q,k,v" into targets, naming a bad one. */
export function parseLoraTargets(list: string): LoraTarget[] {
  const out = list.split(",").map((s) => s.trim()).filter(Boolean);
  const bad = out.find((t) => !(LORA_TARGETS as readonly string[]).includes(t));
  if (bad || out.length === 0) {
    throw new Error(`--lora-targets: "${bad ?? list}" is not one of ${LORA_TARGETS.join(",")}`);
  }
  return out as LoraTarget[];
}
