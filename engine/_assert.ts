/**
 * The few @std/assert functions the tests use, on node:assert (JSR is not
 * reachable from our machines; the import map names this file `@std/assert`).
 * @module
 */
import nodeAssert from "node:assert";

export class AssertionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AssertionError";
  }
}

export function assert(cond: unknown, msg = "assertion failed"): asserts cond {
  if (!cond) throw new AssertionError(msg);
}

export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  try {
    nodeAssert.deepStrictEqual(actual, expected);
  } catch (e) {
    throw new AssertionError(`${msg ? msg + ": " : ""}${(e as Error).message}`);
  }
}

export function assertAlmostEquals(
  actual: number,
  expected: number,
  tolerance = 1e-7,
  msg?: string,
): void {
  if (!(Math.abs(actual - expected) <= tolerance)) {
    throw new AssertionError(
      `${msg ? msg + ": " : ""}${actual} is not within ${tolerance} of ${expected}`,
    );
  }
}

export async function assertRejects(
  fn: () => Promise<unknown>,
  ErrorClass?: new (...args: never[]) => Error,
  includes?: string,
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    checkError(e, ErrorClass, includes);
    return e as Error;
  }
  throw new AssertionError("expected the promise to reject");
}

export function assertThrows(
  fn: () => unknown,
  ErrorClass?: new (...args: never[]) => Error,
  includes?: string,
): Error {
  try {
    fn();
  } catch (e) {
    checkError(e, ErrorClass, includes);
    return e as Error;
  }
  throw new AssertionError("expected the function to throw");
}

function checkError(
  e: unknown,
  ErrorClass?: new (...args: never[]) => Error,
  includes?: string,
): void {
  if (ErrorClass && !(e instanceof ErrorClass)) {
    throw new AssertionError(`expected ${ErrorClass.name}, got ${(e as Error)?.name}: ${e}`);
  }
  if (includes && !String((e as Error)?.message).includes(includes)) {
    throw new AssertionError(
      `error message "${(e as Error)?.message}" does not include "${includes}"`,
    );
  }
}

/** Throws unless `actual` contains `expected` (std's assertStringIncludes). */
export function assertStringIncludes(actual: string, expected: string, msg?: string): void {
  if (!actual.includes(expected)) {
    throw new AssertionError(
      `${msg ? msg + ": " : ""}expected to find ${JSON.stringify(expected)} in:\n${actual}`,
    );
  }
}
