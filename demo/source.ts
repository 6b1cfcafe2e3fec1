/**
 * The demo task as training data: an endless stream of fresh problems that
 * never repeats a held-out one, resumable.
 * @module
 */
import type { DataRecord, Example, ExampleSource } from "../train/data.ts";
import { DEMO_HELD_OUT, heldOutProblems, ProblemStream } from "./task.ts";

/** Fresh demo problems that never repeat a held-out one. */
export class DemoSource implements ExampleSource {
  readonly name = "demo arithmetic generator";
  #stream: ProblemStream;

  constructor(seed: number) {
    this.#stream = new ProblemStream(seed, heldOutProblems(DEMO_HELD_OUT));
  }

  next(n: number): Example[] {
    return Array.from({ length: n }, () => this.#stream.next());
  }

  state(): Record<string, number> {
    return { rng: this.#stream.rng.state };
  }

  restore(s: Record<string, number>): void {
    this.#stream.rng.state = s.rng;
  }

  describe(): DataRecord {
    return { source: "demo" };
  }
}
