/**
 * Tensor lifetime and grad mode. `tidy(fn)` disposes every tensor created
 * inside fn that fn does not return; `keep(t)` exempts one; `noGrad(fn)` runs
 * without recording the tape.
 * @module
 */

/** What a scope can track. */
export interface Disposable {
  dispose(): void;
  scope: Set<Disposable> | null;
  /** What must outlive this one (a tensor's tape: inputs and saved tensors). */
  dependencies?(): Disposable[];
}

const scopes: Set<Disposable>[] = [];
let gradDepth = 0;

/** Registers a new tensor with the innermost scope (if any). */
export function track<T extends Disposable>(t: T): T {
  const s = scopes.at(-1);
  if (s) {
    s.add(t);
    t.scope = s;
  }
  return t;
}

/** Removes `t` from scope tracking: it lives until disposed by hand. */
export function keep<T extends Disposable>(t: T): T {
  t.scope?.delete(t);
  t.scope = null;
  return t;
}

function collect(value: unknown, out: Set<Disposable>): void {
  if (value && typeof value === "object") {
    if ("scope" in value && "dispose" in value) out.add(value as Disposable);
    else if (Array.isArray(value)) value.forEach((v) => collect(v, out));
    else if (Object.getPrototypeOf(value) === Object.prototype) {
      Object.values(value).forEach((v) => collect(v, out));
    }
  }
}

/** Adds everything `value` depends on, transitively, to `out`. */
function closeOver(out: Set<Disposable>): void {
  const stack = [...out];
  while (stack.length) {
    for (const d of stack.pop()!.dependencies?.() ?? []) {
      if (!out.has(d)) {
        out.add(d);
        stack.push(d);
      }
    }
  }
}

/**
 * Runs fn; disposes the tensors it created except those it returns (arrays
 * and plain objects are searched) and those their tape still needs for
 * backward, which all move to the enclosing scope.
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Set<Disposable>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } finally {
    scopes.pop();
  }
  if (result instanceof Promise) {
    throw new Error("tidy(): fn must be synchronous; await outside, or dispose by hand");
  }
  const returned = new Set<Disposable>();
  collect(result, returned);
  closeOver(returned);
  const parent = scopes.at(-1) ?? null;
  for (const t of scope) {
    if (returned.has(t)) {
      t.scope = parent;
      parent?.add(t);
    } else t.dispose();
  }
  return result;
}

/** Runs fn without recording gradients. */
export function noGrad<T>(fn: () => T): T {
  gradDepth++;
  try {
    return fn();
  } finally {
    gradDepth--;
  }
}

/** Runs fn recording gradients even inside noGrad (a recomputation inside backward). */
export function withGrad<T>(fn: () => T): T {
  const saved = gradDepth;
  gradDepth = 0;
  try {
    return fn();
  } finally {
    gradDepth = saved;
  }
}

/** True when ops should record the tape. */
export function gradEnabled(): boolean {
  return gradDepth === 0;
}
