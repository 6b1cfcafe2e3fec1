/**
 * A run's output directory, checked before anything is loaded or trained:
 * it must be a writable directory; a run already in it is continued
 * (--resume), replaced (--overwrite) or refused; the model must not live
 * inside it, since the run replaces its checkpoints. One trainer at a time
 * writes to it (RunLock).
 * @module
 */
import { exists, pathKind, resolvePath } from "../engine/paths.ts";

/** What a run leaves in its output directory. */
const RUN_FILES = ["metrics.jsonl", "checkpoint", "best", "merged"];

/** A problem with --out or --model, found before anything is loaded: a one-line message. */
export class RunDirError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RunDirError";
  }
}

/**
 * Checks `out` against `modelDir` and the flags, and takes the run's lock
 * (held until the process ends or `releaseSync`). Throws RunDirError.
 */
export async function prepareOutDir(
  out: string,
  modelDir: string | null,
  flags: { resume?: boolean; overwrite?: boolean },
  log: (line: string) => void = console.log,
): Promise<RunLock> {
  const kind = await pathKind(out);
  if (kind === "file") throw new RunDirError(`--out ${out} is a file; pass a directory`);
  try {
    await Deno.mkdir(out, { recursive: true });
    const probe = `${out}/.write-test-${Deno.pid}`;
    await Deno.writeTextFile(probe, "");
    await Deno.remove(probe);
  } catch (e) {
    throw new RunDirError(`--out ${out}: cannot write there (${(e as Error).message})`);
  }
  if (modelDir !== null) {
    const [m, o] = [await resolvePath(modelDir), await resolvePath(out)];
    if (m === o || m.startsWith(o + "/")) {
      throw new RunDirError(
        `--model ${modelDir} lies inside --out ${out}, whose checkpoints this run replaces; copy the model elsewhere or pass another --out`,
      );
    }
  }
  let lock: RunLock;
  try {
    lock = await RunLock.acquire(out, log);
  } catch (e) {
    throw new RunDirError((e as Error).message);
  }
  const held: string[] = [];
  for (const name of RUN_FILES) if (await exists(`${out}/${name}`)) held.push(name);
  for await (const e of Deno.readDir(out)) {
    if (/^(checkpoint|best)\.(new|old)-/.test(e.name)) held.push(e.name);
  }
  if (flags.resume || held.length === 0) return lock;
  if (!flags.overwrite) {
    lock.releaseSync();
    throw new RunDirError(
      `--out ${out} already holds a run (${
        held.join(", ")
      }): pass --resume to continue it, a new --out, or --overwrite to replace it`,
    );
  }
  for (const name of held) await Deno.remove(`${out}/${name}`, { recursive: true });
  return lock;
}

/** The lock file that makes one trainer the only writer of an output directory. */
export const LOCK_FILE = ".lock";

/** Who holds a lock: the process and when it started (to tell a reused pid from the owner). */
interface LockOwner {
  pid: number;
  host: string;
  /** When the process started (ps's lstart), to tell a reused pid from the owner; null if unknown. */
  started: string | null;
}

/** This machine's name, or "" without the permission to read it. */
function hostName(): string {
  try {
    return Deno.hostname();
  } catch {
    return "";
  }
}

/**
 * When process `pid` started (`ps -o lstart=`), "" when there is no such
 * process, or null when that cannot be told (no ps, or no permission to run it).
 */
function processStarted(pid: number): string | null {
  try {
    const out = new Deno.Command("ps", { args: ["-o", "lstart=", "-p", String(pid)] }).outputSync();
    return new TextDecoder().decode(out.stdout).trim();
  } catch {
    return null;
  }
}

/** True when `owner` is certainly gone: this host, and its pid is dead or now another process. */
function ownerIsGone(owner: LockOwner): boolean {
  if (owner.host !== hostName()) return false;
  const started = processStarted(owner.pid);
  if (started === null) return false; // cannot tell: keep the lock
  return started === "" || (owner.started !== null && started !== owner.started);
}

/** An exclusive lock on a run's output directory, held until `release`. */
export class RunLock {
  readonly path: string;
  #released = false;

  private constructor(path: string) {
    this.path = path;
  }

  /**
   * Takes the lock atomically (create-new of OUT/.lock holding pid and host).
   * A lock whose process is gone is taken over, saying so through `log`; a
   * live one is refused naming its pid and host.
   */
  static async acquire(out: string, log: (line: string) => void): Promise<RunLock> {
    const path = `${out}/${LOCK_FILE}`;
    const me: LockOwner = { pid: Deno.pid, host: hostName(), started: processStarted(Deno.pid) };
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const f = await Deno.open(path, { createNew: true, write: true });
        try {
          await f.write(new TextEncoder().encode(JSON.stringify(me) + "\n"));
        } finally {
          f.close();
        }
        return new RunLock(path);
      } catch (e) {
        if (!(e instanceof Deno.errors.AlreadyExists)) {
          throw new Error(`${path}: cannot create the run's lock (${(e as Error).message})`);
        }
      }
      let owner: LockOwner | null = null;
      try {
        owner = JSON.parse(await Deno.readTextFile(path));
      } catch { /* unreadable: written by a process killed mid-write */ }
      if (owner && !ownerIsGone(owner)) {
        throw new Error(
          `--out ${out} is in use by another trainer (pid ${owner.pid} on ${owner.host}, ${path}); ` +
            "wait for it to finish, or pass another --out. If that process is gone, remove the lock file",
        );
      }
      log(
        `${path}: taking over a stale lock (${
          owner ? `pid ${owner.pid} on ${owner.host} is gone` : "unreadable"
        })`,
      );
      await Deno.remove(path).catch(() => {});
    }
    throw new Error(`${path}: another trainer took the lock at the same moment; try again`);
  }

  /** Removes the lock file (idempotent). */
  releaseSync(): void {
    if (this.#released) return;
    this.#released = true;
    try {
      Deno.removeSync(this.path);
    } catch { /* already gone */ }
  }
}
