/**
 * Science answers (UGPhysics, SciCode-style numeric answers; GPQA-style
 * multiple choice): a number with optional scientific notation and unit,
 * compared with a relative tolerance after converting SI prefixes of the same
 * unit; or a choice letter.
 * @module
 */
import { lastBoxed } from "./answer.ts";

/** A parsed quantity: its value in base units (SI prefixes applied) and the unit left. */
export interface Quantity {
  value: number;
  unit: string;
}

const PREFIX: Record<string, number> = {
  T: 1e12,
  G: 1e9,
  M: 1e6,
  k: 1e3,
  c: 1e-2,
  m: 1e-3,
  u: 1e-6,
  "µ": 1e-6,
  "μ": 1e-6,
  n: 1e-9,
  p: 1e-12,
};

/** Units whose prefixed forms are converted (km -> 1000 m). */
const BASE_UNITS = [
  "m",
  "s",
  "g",
  "N",
  "J",
  "W",
  "Pa",
  "Hz",
  "V",
  "A",
  "K",
  "C",
  "eV",
  "T",
  "F",
  "Ω",
  "L",
  "mol",
];

/** LaTeX and Unicode spellings of times-ten-to-the and of units, made plain. */
function plain(s: string): string {
  return s
    .replace(/\\(?:left|right|,|;|!|:|quad)/g, " ")
    .replace(/\\(?:mathrm|text|mbox|operatorname)\s*\{([^{}]*)\}/g, " $1 ")
    .replace(/\\(?:times|cdot)|×|·/g, "*")
    .replace(/\\mu\b/g, "µ")
    .replace(/\\Omega\b/g, "Ω")
    .replace(/\^\s*\{\s*([+-−]?\d+)\s*\}/g, "^$1")
    .replace(/−/g, "-")
    .replace(/[{}$]/g, " ")
    .replace(/~/g, " ")
    .trim();
}

/** Splits a unit like "km" into (prefix factor, base) when the base is a known SI unit. */
function splitUnit(unit: string): { factor: number; base: string } {
  if (BASE_UNITS.includes(unit)) return { factor: 1, base: unit };
  const p = PREFIX[unit[0]];
  if (p !== undefined && BASE_UNITS.includes(unit.slice(1))) {
    return { factor: p, base: unit.slice(1) };
  }
  return { factor: 1, base: unit };
}

/**
 * A number with optional scientific notation and a trailing unit:
 * `3.2 \times 10^{4}`, `3.2e4`, `32000 m/s`, `1.5 km`, `-2.0 \times 10^{-3}\,\mathrm{J}`,
 * `1,234.5 N`. Null when the text holds no number.
 */
export function parseQuantity(text: string): Quantity | null {
  const s = plain(text);
  const power = /^10\s*\^\s*([+-]?\d+)\s*(.*)$/.exec(s); // "10^{5} Pa": a bare power of ten
  const m = power
    ? null
    : /^([+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?)(?:\s*(?:[eE]([+-]?\d+)|\*\s*10\s*\^\s*([+-]?\d+)))?\s*(.*)$/
      .exec(s) ?? null;
  const mantissa = m?.[1]?.replace(/,/g, "");
  let value: number;
  let rest: string;
  if (m && mantissa && /\d/.test(mantissa)) {
    value = Number(mantissa) * 10 ** Number(m[2] ?? m[3] ?? 0);
    rest = m[4];
  } else if (power) {
    value = 10 ** Number(power[1]);
    rest = power[2];
  } else return null;
  if (!Number.isFinite(value)) return null;
  const unit = rest.replace(/\s+/g, "").replace(/\.$/, "");
  const first = /^[A-Za-zµμΩ]+/.exec(unit)?.[0] ?? "";
  const { factor, base } = splitUnit(first);
  return { value: value * factor, unit: base + unit.slice(first.length) };
}

/** The choice letter a response or gold answer names: "B", "(B)", "B) ...", "Answer: B". */
export function choiceLetter(text: string, letters = "ABCDEFGHIJ"): string | null {
  const s = text.trim();
  // "B", "(B)", "B)", "B." or "B: ...": a letter standing alone (not the article in "A long ...")
  const single = new RegExp(`^\\(?([${letters}])(?:\\)|[.:](?:\\s|$)|$)`).exec(s);
  if (single) return single[1];
  const said = new RegExp(`(?:answer|option|choice)\\s*(?:is|:)?\\s*\\(?([${letters}])\\)?\\b`, "i")
    .exec(s);
  return said ? said[1].toUpperCase() : null;
}

/**
 * The answer of a response: the last \boxed{}, else what follows "answer
 * is", else (multiple choice) the last letter in parentheses, else the last
 * quantity.
 */
export function extractScienceAnswer(response: string, multipleChoice = false): string | null {
  const boxed = lastBoxed(response);
  if (boxed !== null) return boxed.trim();
  if (multipleChoice) {
    const letters = [...response.matchAll(/\(([A-J])\)/g)];
    const said = choiceLetter(/answer\s*(?:is|:)\s*([^\n]+)/i.exec(response)?.[1] ?? "");
    return said ?? letters.at(-1)?.[1] ?? null;
  }
  const said = /answer\s*(?:is|:)\s*([^\n]+)/i.exec(response);
  if (said) return said[1].replace(/\.\s*$/, "").trim();
  const numbers = [
    ...response.matchAll(
      /[+-]?\d[\d,]*(?:\.\d+)?(?:\s*(?:[eE][+-]?\d+|(?:\\times|×|\*)\s*10\^\{?[+-]?\d+\}?))?(?:\s*[A-Za-zµμΩ/^\d]+)?/g,
    ),
  ];
  return numbers.length ? numbers.at(-1)![0].trim() : null;
}

/**
 * True when a response's answer matches the gold one: the same choice letter
 * (when `choices` are given or the gold is a letter), else the same quantity
 * within `rtol` relative tolerance (units, when both give one, must agree after
 * SI prefixes), else the same text.
 */
export function scienceMatch(
  answer: string | null,
  gold: string,
  options: { rtol?: number; multipleChoice?: boolean } = {},
): boolean {
  if (answer === null) return false;
  const rtol = options.rtol ?? 1e-2;
  const goldLetter = choiceLetter(gold);
  if (options.multipleChoice || (goldLetter !== null && gold.trim().length <= 3)) {
    return goldLetter !== null && choiceLetter(answer) === goldLetter;
  }
  const g = parseQuantity(gold);
  const a = parseQuantity(answer);
  if (g && a) {
    if (g.unit && a.unit && g.unit !== a.unit) return false;
    return Math.abs(a.value - g.value) <= rtol * Math.abs(g.value) ||
      (g.value === 0 && Math.abs(a.value) <= rtol);
  }
  return plain(answer).replace(/\s+/g, "") === plain(gold).replace(/\s+/g, "");
}
