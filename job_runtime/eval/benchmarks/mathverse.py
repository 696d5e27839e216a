"""MathVerse (testmini): AI4Math/MathVerse, config testmini (3,940 items: 788 problems in five
versions), or config testmini_text_only (788 items, the "Text Only" version).

Upstream scores with a GPT-4 extractor and a GPT-4 judge; this is the judge-free equivalent:

- multi-choice: the options are parsed from the question ("Choices:\\nA:40°\\nB:60°"); the
  response's option letter (or option text, or value) must match the gold letter ("B", "(B)");
  golds that are not letters ("False", "090^\\circ T") are compared as free-form answers;
- free-form: the extracted answer equals the gold after normalisation (units, degrees, "Area =",
  LaTeX): same string, same value (a decimal on either side may round the other: "28.27" for
  "9\\pi"), same tuple, or math-verify equivalence.

Reported per problem version (Text Dominant, Text Lite, Vision Intensive, Vision Dominant, Vision
Only, Text Only), subject and subfield. The headline averages the versions present other than
Text Only (only Text Only when that is all there is).
"""

from __future__ import annotations

import re
from typing import Any

from job_runtime.eval.answers import LETTERS, choice_letter, clean_answer, extract_answer, extract_choice, math_equal
from job_runtime.eval.benchmarks.base import Benchmark, Verdict, accuracy_by
from job_runtime.eval.benchmarks.numbers import clean_latex, repair_escapes, strip_units, to_number

VERSIONS = ("Text Dominant", "Text Lite", "Vision Intensive", "Vision Dominant", "Vision Only", "Text Only")
_OPTION_LINE = re.compile(r"^\s*\(?([A-H])\)?\s*[:.：)]\s*(.*)$")


def parse_choices(question: str) -> list[str]:
    """The options listed after "Choices:" in a MathVerse question.

    >>> parse_choices("angle?\\nChoices:\\nA:40°\\nB:60°")
    ['40°', '60°']
    """
    _, sep, tail = question.partition("Choices:")
    if not sep:
        return []
    out: list[str] = []
    for line in tail.strip().split("\n"):
        m = _OPTION_LINE.match(line)
        if m and m.group(1) == LETTERS[len(out)]:
            out.append(m.group(2).strip())
        elif out and line.strip():
            out[-1] += " " + line.strip()
    return out


def _decimals(s: str) -> int | None:
    m = re.fullmatch(r"\s*[-+]?\d+\.(\d+)\s*", s)
    return len(m.group(1)) if m else None


def free_form_equal(pred: str | None, gold: str) -> bool:
    """Free-form equality with rounding to the precision a plain decimal shows.

    >>> free_form_equal("28.27", "9\\\\pi"), free_form_equal("Area = 113.1 cm^2", "113.1"), free_form_equal("3", "4")
    (True, True, False)
    """
    if pred is None:
        return False
    p, g = clean_answer(pred), clean_answer(gold)
    if math_equal(p, g):
        return True
    a, b = to_number(p), to_number(g)
    if a is None or b is None:
        return False
    for text, mine, other in ((clean_latex(p).split("=")[-1], a, b), (clean_latex(g).split("=")[-1], b, a)):
        k = _decimals(strip_units(text))
        if k is not None and abs(round(other, k) - mine) < 0.5 * 10 ** (-k) + 1e-9:
            return True
    return False


class MathVerse(Benchmark):
    name = "mathverse"
    hf_id = "AI4Math/MathVerse"
    hf_config = "testmini"
    split = "testmini"
    id_field = "sample_index"
    required = ("question",)

    def choices(self, row: dict[str, Any]) -> list[str] | None:
        if str(row.get("question_type", "")).startswith("multi"):
            return parse_choices(str(row.get("question_for_eval") or row.get("question") or "")) or None
        return None

    def question(self, row: dict[str, Any]) -> str:
        return str(row.get("question") or row.get("question_for_eval") or "").strip()

    def official_prompt(self, row: dict[str, Any]) -> str:
        return str(row.get("query_cot") or row.get("query_wo") or self.question(row))

    def score(self, row: dict[str, Any], response: str) -> Verdict:
        gold = repair_escapes(str(row["answer"])).strip()
        if str(row.get("question_type", "")).startswith("multi"):
            choices = self.choices(row)
            n = len(choices) if choices else 6
            gold_letter = choice_letter(gold, None, n=n) if re.fullmatch(r"\(?[A-H]\)?", gold) else None
            if re.fullmatch(r"[A-H](?:\s*[\n,;]\s*[A-H])+", gold):  # several right options
                ext = extract_answer(response, lenient=True)
                said = set(re.findall(r"\b([A-H])\b", ext or ""))
                return Verdict(ext, said == set(re.findall(r"[A-H]", gold)))
            letter, ext = extract_choice(response, choices, n=n)
            if gold_letter is not None:
                return Verdict(letter or ext, letter == gold_letter)
            return Verdict(ext, free_form_equal(ext, gold))
        pred = extract_answer(response, lenient=True)
        return Verdict(pred, free_form_equal(pred, gold))

    def aggregate(self, rows, verdicts):
        by_version = accuracy_by(rows, verdicts, "problem_version")
        main = [v["accuracy"] for k, v in by_version.items() if k != "Text Only"]
        if not main and by_version:
            main = [v["accuracy"] for v in by_version.values()]
        score = sum(main) / len(main) if main else 0.0
        meta = lambda key: (lambda r: (r.get("metadata") or {}).get(key) if isinstance(r.get("metadata"), dict) else None)  # noqa: E731
        breakdown = {
            "correct": sum(v.correct for v in verdicts),
            "total": len(verdicts),
            "problem_version": by_version,
            "subject": accuracy_by(rows, verdicts, meta("subject")),
            "subfield": accuracy_by(rows, verdicts, meta("subfield")),
        }
        return score, breakdown
