import {
  answersMatch,
  extractAnswer,
  lastBoxed,
  normalizeAnswer,
  numericValue,
} from "../infer/answer.ts";
import { majorityVote } from "../infer/answer.ts";
import { assertEquals } from "@std/assert";

Deno.test("lastBoxed() takes the last box with balanced braces", () => {
  const cases: [string, string | null][] = [
    ["so \\boxed{42}.", "42"],
    ["\\boxed{\\frac{3}{4}}", "\\frac{3}{4}"],
    ["first \\boxed{1} then \\boxed{2}", "2"],
    ["nested \\boxed{\\sqrt{\\frac{1}{2}}} done", "\\sqrt{\\frac{1}{2}}"],
    ["no box at all: 17", null],
    ["unclosed \\boxed{12", null],
    ["unclosed last \\boxed{7} and \\boxed{8", "7"],
    ["\\fbox{5}", "5"],
    ["\\boxed {x+1}", "x+1"],
  ];
  for (const [text, want] of cases) assertEquals(lastBoxed(text), want, text);
});

Deno.test("normalizeAnswer() strips formatting, units, text and thousands commas", () => {
  const cases: [string, string][] = [
    [" 42 ", "42"],
    ["\\left( 1, 2 \\right)", "(1,2)"],
    ["\\dfrac{3}{4}", "\\frac{3}{4}"],
    ["\\tfrac12", "\\frac12"],
    ["90^\\circ", "90"],
    ["90^{\\circ}", "90"],
    ["$5$", "5"],
    ["7.", "7"],
    ["5 \\text{ cm}", "5"],
    ["12\\mbox{ meters}", "12"],
    ["\\text{Monday}", "Monday"],
    ["1,000", "1000"],
    ["1,234,567.5", "1234567.5"],
    ["(1,2)", "(1,2)"],
    ["10\\%", "10"],
    ["3\\!000", "3000"],
  ];
  for (const [raw, want] of cases) assertEquals(normalizeAnswer(raw), want, raw);
});

Deno.test("answers compare numerically across fractions, decimals and a/b", () => {
  assertEquals(numericValue("\\frac{3}{4}"), 0.75);
  assertEquals(numericValue("-\\frac{1}{2}"), -0.5);
  assertEquals(numericValue("3/4"), 0.75);
  assertEquals(numericValue("x+1"), null);
  const same: [string, string][] = [
    ["\\frac{3}{4}", "0.75"],
    ["\\dfrac{1}{2}", "1/2"],
    ["1,000", "1000"],
    ["5 \\text{ cm}", "5"],
    ["2.50", "2.5"],
    ["\\frac12", "0.5"],
  ];
  for (const [a, b] of same) assertEquals(answersMatch(a, b), true, `${a} == ${b}`);
  const different: [string, string][] = [["3", "4"], ["\\frac{3}{4}", "0.7"], ["x", "y"]];
  for (const [a, b] of different) assertEquals(answersMatch(a, b), false, `${a} != ${b}`);
  assertEquals(answersMatch(null, "1"), false);
});

Deno.test("extractAnswer() boxed and raw formats; majorityVote() ignores missing answers", () => {
  assertEquals(extractAnswer("The answer is \\boxed{1,000}.", "boxed"), "1000");
  assertEquals(extractAnswer("no box", "boxed"), null);
  assertEquals(extractAnswer(" 805 ", "raw"), "805");
  assertEquals(majorityVote(["3", null, "4", "3", null]), "3");
  assertEquals(majorityVote(["5", "6"]), "5");
  assertEquals(majorityVote([null, null]), null);
  // ties: the answer seen first (Counter.most_common), whichever reaches the count last
  assertEquals(majorityVote(["1", "2", "2", "1"]), "1");
  assertEquals(majorityVote(["2", "1", "1", "2", null]), "2");
});
