/** The error of rollouts from servers: says which server and why. */
export class RolloutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RolloutError";
  }
}
