/**
 * A Hugging Face checkpoint's weight files: model.safetensors, or the shards
 * model.safetensors.index.json lists (each name must stay inside the
 * directory), read tensor by tensor.
 * @module
 */
import {
  type RawTensor,
  SafetensorsError,
  type SafetensorsReader,
  type TensorEntry,
} from "../safetensors_format.ts";
import type { CheckpointSource } from "./source.ts";

/** A checkpoint directory: model.safetensors, or shards listed in model.safetensors.index.json. */
export class Checkpoint {
  readonly dir: string;
  #files: SafetensorsReader[];
  #where = new Map<string, SafetensorsReader>();

  private constructor(dir: string, files: SafetensorsReader[]) {
    this.dir = dir;
    this.#files = files;
    for (const f of files) for (const n of f.names) this.#where.set(n, f);
  }

  /** Opens the weight files of a checkpoint source. */
  static async open(source: CheckpointSource): Promise<Checkpoint> {
    const dirOrFile = source.name;
    const index = `${dirOrFile}/model.safetensors.index.json`;
    let indexText: string | null;
    try {
      indexText = await source.text("model.safetensors.index.json");
    } catch (e) {
      throw new SafetensorsError(index, `cannot read (${(e as Error).message})`);
    }
    if (indexText === null) {
      return new Checkpoint(dirOrFile, [await source.safetensors("model.safetensors")]);
    }
    let map: Record<string, string>;
    try {
      map = JSON.parse(indexText).weight_map;
    } catch (e) {
      throw new SafetensorsError(index, `is not valid JSON (${(e as Error).message})`);
    }
    if (!map || typeof map !== "object") {
      throw new SafetensorsError(index, "has no weight_map object");
    }
    const shards = [...new Set(Object.values(map))];
    for (const s of shards) {
      // shard names are file names inside the checkpoint directory, nothing else
      if (
        typeof s !== "string" || s === "" || s.startsWith("/") || /(^|[\\/])\.\.([\\/]|$)/.test(s)
      ) {
        throw new SafetensorsError(
          index,
          `weight_map points to ${JSON.stringify(s)}, outside the checkpoint directory`,
        );
      }
    }
    const files: SafetensorsReader[] = [];
    try {
      for (const s of shards) files.push(await source.safetensors(s));
    } catch (e) {
      files.forEach((f) => f.close());
      throw e;
    }
    const ckpt = new Checkpoint(dirOrFile, files);
    for (const [name, shard] of Object.entries(map)) {
      if (ckpt.#where.get(name)?.path !== `${dirOrFile}/${shard}`) {
        ckpt.close();
        throw new SafetensorsError(
          index,
          `weight_map lists "${name}" in ${shard}, which does not hold it`,
        );
      }
    }
    return ckpt;
  }

  get names(): string[] {
    return [...this.#where.keys()];
  }

  entry(name: string): TensorEntry | undefined {
    return this.#where.get(name)?.entries.get(name);
  }

  /** The file that holds `name`. */
  fileOf(name: string): string | undefined {
    return this.#where.get(name)?.path;
  }

  async read(name: string): Promise<RawTensor> {
    const f = this.#where.get(name);
    if (!f) throw new SafetensorsError(this.dir, `no tensor named "${name}" in the checkpoint`);
    return await f.read(name);
  }

  close(): void {
    this.#files.forEach((f) => f.close());
  }
}
