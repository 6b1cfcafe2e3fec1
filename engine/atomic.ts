/**
 * Writing files and directories so that a crash never leaves the user with
 * nothing: a file is written beside its target and renamed over it; a
 * directory is replaced by renames that a later `recoverDirectory` can
 * always complete.
 * @module
 */

/** Writes through `fill` into a temp file beside `path`, syncs, then renames it into place. */
export async function atomicWrite(
  path: string,
  fill: (file: Deno.FsFile) => Promise<void>,
): Promise<void> {
  const tmp = `${path}.tmp-${uniqueSuffix()}`;
  let file: Deno.FsFile;
  try {
    file = await Deno.open(tmp, { write: true, create: true, truncate: true });
  } catch (e) {
    throw new Error(`${path}: cannot write (${(e as Error).message})`);
  }
  try {
    try {
      await fill(file);
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e instanceof Error && e.message.startsWith(path)
      ? e
      : new Error(`${path}: cannot write (${(e as Error).message})`);
  }
}

/** Writes `text` (UTF-8) to `path` through atomicWrite, every byte (a write may take only part). */
export async function atomicWriteText(path: string, text: string): Promise<void> {
  const bytes = new TextEncoder().encode(text);
  await atomicWrite(path, async (file) => {
    for (let done = 0; done < bytes.length;) done += await file.write(bytes.subarray(done));
  });
}

/** `<pid>-<random>`: names temp files and directories no other writer uses. */
export function uniqueSuffix(): string {
  return `${Deno.pid}-${Math.random().toString(36).slice(2)}`;
}

/** A fresh temp directory beside `path` to fill before `replaceDirectory`. */
export async function tempDirectoryBeside(path: string): Promise<string> {
  const tmp = `${path}.tmp-${uniqueSuffix()}`;
  await Deno.mkdir(tmp, { recursive: true });
  return tmp;
}

/**
 * Puts the complete directory `tmp` at `path`, replacing what was there:
 * `tmp` is renamed to `path.new-*` (complete), the old `path` to `path.old-*`,
 * then `path.new-*` to `path`, and the old one is removed. A crash at any
 * point leaves `path`, or a complete `.new-*`/`.old-*` that
 * `recoverDirectory(path)` renames back. `afterRetiringOld` runs in the one
 * window where `path` is missing (tests crash there).
 */
export async function replaceDirectory(
  tmp: string,
  path: string,
  afterRetiringOld?: () => Promise<void>,
): Promise<void> {
  const id = uniqueSuffix();
  const ready = `${path}.new-${id}`;
  await Deno.rename(tmp, ready);
  const old = `${path}.old-${id}`;
  let hadOld = false;
  try {
    await Deno.rename(path, old);
    hadOld = true;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  await afterRetiringOld?.();
  await Deno.rename(ready, path);
  if (hadOld) await Deno.remove(old, { recursive: true });
}

/**
 * Completes an interrupted `replaceDirectory(…, path)`: when `path` is missing,
 * the newest complete `path.new-*` (else `path.old-*`) becomes `path`. Then
 * removes every leftover `path.tmp-*`, `.new-*` and `.old-*` (incomplete or
 * superseded). Returns the directory that was renamed back, or null.
 */
export async function recoverDirectory(path: string): Promise<string | null> {
  const trimmed = path.replace(/\/+$/, "");
  const slash = trimmed.lastIndexOf("/");
  const parent = slash < 0 ? "." : slash === 0 ? "/" : trimmed.slice(0, slash);
  const base = trimmed.slice(slash + 1);
  const leftovers: { name: string; kind: string; mtime: number }[] = [];
  try {
    for await (const e of Deno.readDir(parent)) {
      const m = e.name.startsWith(`${base}.`) &&
        /^\.(tmp|new|old)-/.exec(e.name.slice(base.length));
      if (!m) continue;
      const st = await Deno.stat(`${parent}/${e.name}`);
      leftovers.push({ name: `${parent}/${e.name}`, kind: m[1], mtime: st.mtime?.getTime() ?? 0 });
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  let recovered: string | null = null;
  let exists = true;
  try {
    await Deno.stat(trimmed);
  } catch {
    exists = false;
  }
  if (!exists) {
    const newest = (kind: string) =>
      leftovers.filter((l) => l.kind === kind).sort((a, b) => b.mtime - a.mtime)[0];
    const pick = newest("new") ?? newest("old");
    if (pick) {
      await Deno.rename(pick.name, trimmed);
      recovered = pick.name;
    }
  }
  for (const l of leftovers) {
    if (l.name !== recovered) await Deno.remove(l.name, { recursive: true }).catch(() => {});
  }
  return recovered;
}
