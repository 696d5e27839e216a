"""MathVision (MATH-V): MathLLMs/MathVision, splits test (3,040 items) and testmini (304).

Two protocols (`MathVision.verdict`): ``official`` (the default) is the authors' rule-based
evaluation rule for rule (job_runtime.eval.benchmarks.mathvision_official); ``strict`` is the robust
scorer below (`MathVision.score`): it reads answers the official rules miss ("5 cm" for 5, a
final answer after a revised box) and refuses what they accept by accident.

The strict scoring follows the authors' evaluation/evaluate.py and utils.py, judge-free as upstream is, with
extraction made robust to how models write answers:

- extraction: the last ``\\boxed{}``/<answer>/answer phrase (job_runtime.eval.answers); else upstream's
  quick rules (a response ending " C." or " (C).", starting "C\\n"; "... is 12." at the end);
- multiple choice: the named option letter ("B", "(B)", "\\text{B}", "Option B", the option text)
  must be the answer letter; or the extraction equals the option's text (upstream's
  ``is_equal(gt_answer_value, model_answer)``);
- free form: upstream's `is_equal`: lower-cased string equality; tuples/lists element-wise; LaTeX
  to a value with both sides rounded to 2 decimals (``\\frac``, ``\\sqrt``, ``\\pi``, units, degrees
  and "x =" prefixes handled by job_runtime.eval.benchmarks.numbers); math-verify for symbolic forms.

Breakdowns: accuracy per subject and per level (upstream's math_level_subject_acc).
"""

from __future__ import annotations

import re
from typing import Any

from job_runtime.eval.answers import LETTERS, as_sequence, choice_letter, clean_answer, find_answer, math_equal
from job_runtime.eval.benchmarks.base import Benchmark, Verdict, accuracy_by, check_protocol
from job_runtime.eval.benchmarks.mathvision_official import official_verdict
from job_runtime.eval.benchmarks.numbers import clean_latex, repair_escapes, to_number

OFFICIAL_INSTRUCTION = (
    "Please solve the problem step by step and put your final answer in \\boxed{}. "
    "If it is a multiple-choice question, put only the letter of the correct option in \\boxed{}."
)


def _after_equals(s: str) -> str:
    for sep in ("\\approx", "≈", "="):
        if sep in s:
            tail = s.split(sep)[-1].strip()
            if tail:
                s = tail
    return s


def mathvision_equal(pred: str | None, gold: str) -> bool:
    """Upstream's is_equal made robust: strings, tuples, values rounded to 2 decimals, math-verify.

    >>> mathvision_equal("0.333", "\\\\frac{1}{3}"), mathvision_equal("(3, -4)", "(3,-4)"), mathvision_equal("5", "6")
    (True, True, False)
    """
    if pred is None:
        return False
    p, g = _after_equals(clean_answer(pred)), _after_equals(clean_answer(gold))
    if not p.replace(" ", "") or not g.replace(" ", ""):
        return False
    if p.strip().lower() == g.strip().lower() or clean_latex(p).lower().replace(" ", "") == clean_latex(g).lower().replace(" ", ""):
        return True
    a, b = to_number(p), to_number(g)
    if a is not None and b is not None:
        return a == b or round(a, 2) == round(b, 2)
    sa, sb = as_sequence(p), as_sequence(g)
    if sa is not None and sb is not None:
        return len(sa) == len(sb) and all(round(x, 2) == round(y, 2) for x, y in zip(sa, sb))
    if (a is None) != (b is None) and not re.search(r"[\\^{}]|sqrt|pi", p + g):
        return False
    return math_equal(p, g)


_QUICK_LETTER = re.compile(r"(?:\s\(?([A-E])\)?\.$)|(?:^\(?([A-E])\)?\n)")


def extract(response: str) -> str | None:
    """The answer of a MathVision response (see the module doc)."""
    text = (response or "").strip()
    ans, _ = find_answer(text)
    if ans is not None:
        return ans
    m = _QUICK_LETTER.search(text)
    if m:
        return m.group(1) or m.group(2)
    tail = text.split("is ")[-1].rstrip(".").strip() if "is " in text else ""
    if tail and to_number(tail) is not None and re.fullmatch(r"[-+\d.,/ ]+", tail):
        return tail
    ans, _ = find_answer(text, lenient=True)
    return ans


class MathVision(Benchmark):
    name = "mathvision"
    hf_id = "MathLLMs/MathVision"
    split = "test"
    required = ("question",)

    def options(self, row: dict[str, Any]) -> list[str]:
        return [str(o) for o in (row.get("options") or [])]

    def choices(self, row: dict[str, Any]) -> list[str] | None:
        return self.options(row) or None

    def question(self, row: dict[str, Any]) -> str:
        text = str(row["question"]).strip()
        opts = self.options(row)
        if opts and opts != list(LETTERS[: len(opts)]):
            text += "\nChoices:\n" + "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(opts))
        elif opts:
            text += "\nChoices: " + ", ".join(f"({c})" for c in opts)
        return text

    def official_prompt(self, row: dict[str, Any]) -> str:
        return f"{self.question(row)}\n{OFFICIAL_INSTRUCTION}"

    def verdict(self, row: dict[str, Any], response: str, protocol: str = "official") -> Verdict:
        check_protocol(protocol)
        if protocol == "official":
            ans, ok = official_verdict(str(row["answer"]), self.options(row), response or "")
            return Verdict(ans, ok, "official")
        return self.score(row, response)

    def score(self, row: dict[str, Any], response: str) -> Verdict:
        """The strict protocol."""
        gold = repair_escapes(str(row["answer"])).strip()
        opts = self.options(row)
        ext = extract(response)
        if ext is None:
            return Verdict(None, False)
        if opts and gold in LETTERS[: len(opts)]:
            letter = choice_letter(ext, None if opts == list(LETTERS[: len(opts)]) else opts, n=len(opts))
            if letter is not None:
                return Verdict(letter, letter == gold)
            value = opts[LETTERS.index(gold)]
            return Verdict(ext, mathvision_equal(ext, value) or mathvision_equal(ext, gold))
        if re.fullmatch(r"[A-E]", gold):  # a letter answer without listed options
            return Verdict(ext, choice_letter(ext, n=5) == gold)
        return Verdict(ext, mathvision_equal(ext, gold))

    def aggregate(self, rows, verdicts):
        correct = sum(v.correct for v in verdicts)
        breakdown = {
            "correct": correct,
            "total": len(verdicts),
            "subject": accuracy_by(rows, verdicts, "subject"),
            "level": accuracy_by(rows, verdicts, lambda r: f"level{r['level']}" if r.get("level") is not None else None),
        }
        return (correct / len(verdicts) if verdicts else 0.0), breakdown


class MathVisionTestmini(MathVision):
    name = "mathvision_testmini"
    split = "testmini"
