/**
 * Math answers (EM_SPEC.md "Evaluation"): the last \boxed{...} of a response
 * with balanced braces, normalised, compared numerically where both parse.
 * @module
 */

/** Content of the last \boxed{...} (or \fbox{...}), braces balanced; null when there is none or it is unclosed. */
export function lastBoxed(text: string): string | null {
  const starts = [...text.matchAll(/\\(?:boxed|fbox)\s*\{/g)];
  for (let k = starts.length - 1; k >= 0; k--) {
    const open = starts[k].index! + starts[k][0].length;
    let depth = 1;
    for (let i = open; i < text.length; i++) {
      if (text[i] === "{") depth++;
      else if (text[i] === "}" && --depth === 0) return text.slice(open, i);
    }
  }
  return null;
}

/** Replaces \cmd{x} (balanced) with x, repeatedly. */
function unwrap(s: string, cmd: string): string {
  for (;;) {
    const m = new RegExp(`\\\\${cmd}\\s*\\{`).exec(s);
    if (!m) return s;
    const open = m.index + m[0].length;
    let depth = 1;
    let i = open;
    for (; i < s.length && depth > 0; i++) {
      if (s[i] === "{") depth++;
      else if (s[i] === "}") depth--;
    }
    if (depth !== 0) return s;
    s = s.slice(0, m.index) + s.slice(open, i - 1) + s.slice(i);
  }
}

/** Normalised answer text: no spaces, \left/\right, \!, $, trailing '.', degrees, text wrappers, unit words, thousands commas. */
export function normalizeAnswer(answer: string): string {
  let s = answer.trim();
  s = s.replace(/\\(?:left|right)\b/g, "").replace(/\\[!,;:]/g, "").replace(/\$/g, "");
  s = s.replace(/\^\s*\{?\\circ\}?/g, "").replace(/\\circ/g, "").replace(/\\%|%/g, "");
  s = s.replace(/\\[dt]frac/g, "\\frac");
  s = unwrap(unwrap(unwrap(s, "text"), "mbox"), "mathrm");
  s = s.replace(/\s+/g, "");
  s = s.replace(/\.+$/, "");
  // a number followed by a unit word: keep the number
  const unit = /^(-?[\d.,]+)([a-zA-Z]+\^?\d*)$/.exec(s);
  if (unit && !/^[eE]/.test(unit[2])) s = unit[1];
  // thousands separators
  if (/^-?\d{1,3}(,\d{3})+(\.\d+)?$/.test(s)) s = s.replace(/,/g, "");
  return s;
}

/** The value of a normalised numeric answer: integers, decimals, a/b and \frac{a}{b} (signed); else null. */
export function numericValue(s: string): number | null {
  const num = "-?\\d+(?:\\.\\d+)?|-?\\.\\d+";
  if (new RegExp(`^(?:${num})$`).test(s)) return Number(s);
  let m = new RegExp(`^(-?)\\\\frac\\{(${num})\\}\\{(${num})\\}$`).exec(s) ??
    new RegExp(`^(-?)\\\\frac(\\d)(\\d)$`).exec(s);
  if (m) {
    const v = Number(m[2]) / Number(m[3]);
    return Number.isFinite(v) ? (m[1] ? -v : v) : null;
  }
  m = new RegExp(`^(${num})/(${num})$`).exec(s);
  if (m) {
    const v = Number(m[1]) / Number(m[2]);
    return Number.isFinite(v) ? v : null;
  }
  return null;
}

/** True when two answers agree: equal after normalisation, or numerically equal (relative 1e-6). */
export function answersMatch(a: string | null, b: string | null): boolean {
  if (a === null || b === null) return false;
  const x = normalizeAnswer(a);
  const y = normalizeAnswer(b);
  if (x === y) return true;
  const u = numericValue(x);
  const v = numericValue(y);
  return u !== null && v !== null &&
    Math.abs(u - v) <= 1e-6 * Math.max(1, Math.abs(u), Math.abs(v));
}

/** How to pull an answer out of a response. */
export type AnswerFormat = "boxed" | "raw" | "auto";

/**
 * The answer of a response: its last \boxed{} ("boxed"), the whole trimmed
 * response ("raw"), or the last \boxed{} if there is one and else the last
 * number in the text ("auto": plain answers like the demo task's, too).
 */
export function extractAnswer(response: string, format: AnswerFormat): string | null {
  if (format === "raw") return response.trim() || null;
  const b = lastBoxed(response);
  if (b !== null) return normalizeAnswer(b);
  if (format === "boxed") return null;
  const numbers = response.match(/-?\d+(?:\.\d+)?(?:\/\d+)?/g);
  return numbers ? normalizeAnswer(numbers.at(-1)!) : null;
}

/**
 * The most frequent answer, or null when none has one (null answers do not
 * vote). Ties go to the answer seen first, as Python's
 * `Counter(answers).most_common(1)` breaks them (TTRL's majority reward):
 * ["1", "2", "2", "1"] -> "1". EM-RL's majority reward and self-consistency
 * both vote through this function.
 */
export function majorityVote(answers: (string | null)[]): string | null {
  const counts = new Map<string, number>(); // insertion order: first seen first
  for (const a of answers) if (a !== null) counts.set(a, (counts.get(a) ?? 0) + 1);
  let best: string | null = null;
  let n = 0;
  for (const [a, c] of counts) {
    if (c > n) {
      best = a;
      n = c;
    }
  }
  return best;
}
