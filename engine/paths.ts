/**
 * Small questions about paths that may not exist yet.
 * @module
 */

/** "file", "dir", or null when nothing is there (or it is under a file). */
export async function pathKind(path: string): Promise<"file" | "dir" | null> {
  try {
    return (await Deno.stat(path)).isDirectory ? "dir" : "file";
  } catch {
    return null;
  }
}

/** True when something is at `path`. */
export async function exists(path: string): Promise<boolean> {
  return (await pathKind(path)) !== null;
}

/** The absolute form of a path that may not exist yet (its nearest existing ancestor resolved). */
export async function resolvePath(path: string): Promise<string> {
  const abs = path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
  const parts = abs.split("/").filter((p) => p && p !== ".");
  for (let i = parts.length; i >= 0; i--) {
    try {
      const real = await Deno.realPath("/" + parts.slice(0, i).join("/"));
      return [real.replace(/\/$/, ""), ...parts.slice(i)].join("/");
    } catch { /* go up */ }
  }
  return abs;
}

/** The directory holding `path` ("." for a bare name). */
export function parentOf(path: string): string {
  const i = path.replace(/\/+$/, "").lastIndexOf("/");
  return i <= 0 ? (i === 0 ? "/" : ".") : path.slice(0, i);
}
