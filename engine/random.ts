/** Seeded random numbers (SplitMix32-style), so runs are reproducible. @module */

/** A seeded generator of uniform [0, 1) numbers. */
export class Rng {
  #state: number;
  constructor(seed = 0) {
    this.#state = (seed >>> 0) ^ 0x9e3779b9;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let z = (this.#state = (this.#state + 0x9e3779b9) | 0);
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  }
  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = 1 - this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** The state, to save with a checkpoint. */
  get state(): number {
    return this.#state;
  }
  set state(s: number) {
    this.#state = s | 0;
  }
}
