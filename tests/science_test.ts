/** Science answers: quantities with units and notation, tolerance edges, choice letters. */
import { assert, assertEquals } from "@std/assert";
import {
  choiceLetter,
  extractScienceAnswer,
  parseQuantity,
  scienceMatch,
} from "../infer/science.ts";

Deno.test("parseQuantity() reads scientific notation, LaTeX and SI-prefixed units", () => {
  const cases: [string, number, string][] = [
    ["3.2 \\times 10^{4}", 32000, ""],
    ["3.2e4", 32000, ""],
    ["3.2 × 10^4", 32000, ""],
    ["32000 m/s", 32000, "m/s"],
    ["32 km/s", 32000, "m/s"],
    ["1,234.5 N", 1234.5, "N"],
    ["-2.0 \\times 10^{-3}\\,\\mathrm{J}", -0.002, "J"],
    ["10^{5} Pa", 1e5, "Pa"],
    ["5 ms", 0.005, "s"],
    ["2.5\\,\\text{eV}", 2.5, "eV"],
    ["3 MeV", 3e6, "eV"],
    ["1.5 \\mu m", 1.5e-6, "m"],
    ["$7$", 7, ""],
  ];
  for (const [text, value, unit] of cases) {
    const q = parseQuantity(text);
    assert(q !== null, text);
    assert(Math.abs(q.value - value) <= 1e-12 * Math.abs(value), `${text}: ${q.value}`);
    assertEquals(q.unit, unit, text);
  }
  assertEquals(parseQuantity("no number here"), null);
});

Deno.test("scienceMatch(): relative tolerance at its edges, units that must agree, and text", () => {
  assert(scienceMatch("1.0099", "1"), "within 1%");
  assert(!scienceMatch("1.0101", "1"), "just outside 1%");
  assert(scienceMatch("1.0101", "1", { rtol: 0.02 }), "--rtol widens it");
  assert(scienceMatch("3.2e4 m/s", "32 km/s"), "prefixes convert");
  assert(scienceMatch("32000", "3.2 \\times 10^{4} m/s"), "a bare number matches a quantity");
  assert(!scienceMatch("32 m/s", "32 s"), "different units do not");
  assert(scienceMatch("0.005", "0"), "zero: absolute tolerance");
  assert(!scienceMatch(null, "1"));
  assert(scienceMatch("\\frac{\\pi}{2}", "\\frac{\\pi}{2}"), "same text");
});

Deno.test("multiple choice: letters in their usual spellings; the article 'A' is not a choice", () => {
  for (
    const [text, letter] of [["B", "B"], ["(C)", "C"], ["D) the third", "D"], [
      "The answer is B.",
      "B",
    ], ["Option: c", "C"]]
  ) {
    assertEquals(choiceLetter(text), letter, text);
  }
  assertEquals(choiceLetter("A long answer"), null);
  assert(scienceMatch("(B)", "B", { multipleChoice: true }));
  assert(!scienceMatch("C", "B", { multipleChoice: true }));
});

Deno.test("extractScienceAnswer(): the last \\boxed{}, else what follows 'answer is', else the last quantity", () => {
  assertEquals(extractScienceAnswer("so \\boxed{5\\,\\mathrm{kg}} and more"), "5\\,\\mathrm{kg}");
  assertEquals(extractScienceAnswer("Thus the answer is 12 N."), "12 N");
  assertEquals(
    extractScienceAnswer("v = 10 m/s at first; the speed is 3.2 \\times 10^{4} m/s"),
    "3.2 \\times 10^{4} m/s",
  );
  assertEquals(extractScienceAnswer("no numbers"), null);
});
