/**
 * The training methods --method offers, by name. To add one: a file with
 * its options, Objective and Method (like em_ft.ts), a line here, its
 * options in options.ts, and a test.
 * @module
 */
import { emFt } from "./em_ft.ts";
import { emRl } from "./em_rl.ts";
import { sft } from "./sft.ts";

export const METHODS = { "em-ft": emFt, "em-rl": emRl, sft } as const;

export type MethodName = keyof typeof METHODS;
export const METHOD_NAMES = Object.keys(METHODS) as MethodName[];
