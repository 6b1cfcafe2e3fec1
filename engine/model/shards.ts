/**
 * A Hugging Face checkpoint's weight files: model.safetensors, or the shards
 * model.safetensors.index.json lists (each name must stay inside the
 * directory), read tensor by tensor.
 * @module
 */
import {
  type RawTensor,
  SafetensorsError,
  SafetensorsFile,
  type TensorEntry,
} from "../safetensors.ts";

/** A checkpoint directory: model.safetensors, or shards listed in model.safetensors.index.json. */
export class Checkpoint {
  readonly dir: string;
  #files: SafetensorsFile[];
  #where = new Map<string, SafetensorsFile>();

  private constructor(dir: string, files: SafetensorsFile[]) {
    this.dir = dir;
    this.#files = files;
    for (const f of files) for (const n of f.names) this.#where.set(n, f);
  }

  /** Opens a checkpoint directory (or a single .safetensors file). */
  static async open(dirOrFile: string): Promise<Checkpoint> {
    if (dirOrFile.endsWith(".safetensors")) {
      return new Checkpoint(dirOrFile, [await SafetensorsFile.open(dirOrFile)]);
    }
    const index = `${dirOrFile}/model.safetensors.index.json`;
    let indexText: string | null = null;
    try {
      indexText = await Deno.readTextFile(index);
    } catch { /* not sharded */ }
    if (indexText === null) {
      return new Checkpoint(dirOrFile, [
        await SafetensorsFile.open(`${dirOrFile}/model.safetensors`),
      ]);
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
    const files: SafetensorsFile[] = [];
    try {
      for (const s of shards) files.push(await SafetensorsFile.open(`${dirOrFile}/${s}`));
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
