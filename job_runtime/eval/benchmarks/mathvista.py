"""MathVista (testmini, 1,000 items): AI4Math/MathVista, split testmini.

Two protocols (`MathVista.verdict`): ``official`` (the default) reproduces the authors' pipeline
(job_runtime.eval.benchmarks.mathvista_official: a stand-in for their GPT-4 extraction, then their
normalisation); ``strict`` is the robust scorer below (`MathVista.score`), for verdicts closer to
the truth than to the official pipeline.

The strict scoring follows the authors' evaluation/calculate_score.py with the GPT-4 extraction step made
judge-free. The answer is extracted from the response (job_runtime.eval.answers: boxed, answer tags,
answer phrases, then a short last line), then normalised like `normalize_extracted_answer`:

- multi_choice: an option letter ("B", "(B)", "B. text") becomes the option text; an extraction
  equal to an option text keeps it; anything else becomes the nearest option by edit distance;
- integer: ``str(int(float(x)))`` (truncation, as upstream) of the extraction's number;
- float: ``str(round(float(x), precision))`` with the item's precision;
- list: the numbers formatted as a Python list, "[1, 2]".

The normalised prediction must equal the answer string exactly (upstream's ``safe_equal``).
Numbers are read through job_runtime.eval.benchmarks.numbers, so "1,000", "$4.00", "25%", "6 cm",
"\\frac{1}{2}" and "45^\\circ" are numbers (upstream's ``float()`` on GPT's extraction).

Breakdowns: upstream's target keys (question_type, answer_type, language, source, category,
task, context, grade, skills), each {value: {accuracy, correct, total}}.
"""

from __future__ import annotations

import re
from typing import Any

from job_runtime.eval.answers import LETTERS, as_sequence, clean_answer, extract_answer, extract_choice, nearest_choice
from job_runtime.eval.benchmarks import mathvista_official
from job_runtime.eval.benchmarks.base import Benchmark, Verdict, accuracy_by, check_protocol
from job_runtime.eval.benchmarks.numbers import clean_latex, numbers_in, to_number

BREAKDOWN_KEYS = ("question_type", "answer_type", "language", "source", "category", "task", "context", "grade", "skills")


def _meta(row: dict[str, Any], key: str) -> Any:
    if key in row:
        return row[key]
    meta = row.get("metadata") or {}
    return meta.get(key) if isinstance(meta, dict) else None


def hint(row: dict[str, Any]) -> str:
    """Upstream's zero-shot hint for the item's answer type (build_query.py)."""
    if row.get("question_type") == "multi_choice":
        return "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
    at, prec = row.get("answer_type"), row.get("precision")
    if at == "integer":
        return "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end."
    if at == "float" and int(prec or 0) == 1:
        return ("Hint: Please answer the question requiring a floating-point number with one decimal place and provide "
                "the final value, e.g., 1.2, 1.3, 1.4, at the end.")
    if at == "float" and int(prec or 0) == 2:
        return ("Hint: Please answer the question requiring a floating-point number with two decimal places and provide "
                "the final value, e.g., 1.23, 1.34, 1.45, at the end.")
    if at == "list":
        return ("Hint: Please answer the question requiring a Python list as an answer and provide the final list, "
                "e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.")
    return "Hint: Please answer the question and provide the final answer at the end."


def _fmt_number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def normalize_prediction(extraction: str | None, row: dict[str, Any]) -> str | None:
    """Upstream's normalize_extracted_answer on a judge-free extraction.

    >>> row = {"question_type": "free_form", "answer_type": "float", "precision": 1, "choices": None}
    >>> normalize_prediction("1.25 m", row), normalize_prediction("n/a", row)
    ('1.2', None)
    >>> normalize_prediction("B", {"question_type": "multi_choice", "choices": ["x", "y"]})
    'y'
    """
    qtype, atype, choices = row.get("question_type"), row.get("answer_type"), row.get("choices")
    if qtype == "multi_choice" and choices:
        if extraction is None:
            return None
        ext = clean_answer(extraction)
        letter = re.findall(r"\(([a-zA-Z])\)", ext)
        if letter:
            ext = letter[0].upper()
        options = LETTERS[: len(choices)]
        if ext in options:
            return choices[options.index(ext)]
        return nearest_choice(ext, choices)
    if extraction is None:
        return None
    if atype in ("integer", "float"):
        v = to_number(extraction)
        if v is None:  # "There are 5 people": one number in a short sentence is the answer
            found = numbers_in(clean_latex(extraction))
            v = found[0] if len(found) == 1 else None
        if v is None or abs(v) > 1e18:
            return None
        return str(int(v)) if atype == "integer" else str(round(v, int(row.get("precision") or 0)))
    if atype == "list":
        seq = as_sequence(extraction)
        if seq is None:
            v = to_number(extraction)
            return None if v is None else f"[{_fmt_number(v)}]"
        return "[" + ", ".join(_fmt_number(x) for x in seq) + "]"
    return clean_answer(extraction)


class MathVista(Benchmark):
    name = "mathvista"
    hf_id = "AI4Math/MathVista"
    split = "testmini"
    id_field = "pid"
    required = ("question_type", "answer_type")

    def prepare(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for r in rows:
            if "pid" not in r and "_key" in r:
                r["pid"] = r["_key"]
        return rows

    def choices(self, row: dict[str, Any]) -> list[str] | None:
        return list(row["choices"]) if row.get("choices") else None

    def question(self, row: dict[str, Any]) -> str:
        text = str(row["question"]).strip()
        if row.get("unit"):
            text += f" (Unit: {row['unit']})"
        if row.get("choices"):
            text += "\nChoices:\n" + "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(row["choices"]))
        return text

    def official_prompt(self, row: dict[str, Any]) -> str:
        if row.get("query"):
            return str(row["query"])
        return f"{hint(row)}\nQuestion: {self.question(row)}"

    def extract(self, row: dict[str, Any], response: str) -> str | None:
        """The judge-free stand-in for upstream's GPT extraction (its quick rules first)."""
        resp = (response or "").strip()
        choices = self.choices(row)
        if row.get("question_type") == "multi_choice" and choices:
            if resp in choices:
                return resp
            letter, ext = extract_choice(resp, choices)
            if letter:
                return letter
            # prose without a letter: "Yes, the number of ... is less", "the grasshoppers would be affected most"
            named = mathvista_official.yes_no(resp, choices) or mathvista_official.named_option(resp, choices)
            return named if named is not None else ext
        if row.get("answer_type") in ("integer", "float"):
            try:
                return str(float(resp))
            except ValueError:
                pass
        m = re.search(r'The answer is "(.*)"\.', resp)
        if m:
            return m.group(1)
        ans = extract_answer(resp, lenient=True)
        if ans is None and row.get("answer_type") in ("integer", "float"):
            sentences = [x for x in re.split(r"(?<!\d)[.!?](?!\d)|\n", resp) if x.strip()]
            found = numbers_in(clean_latex(sentences[-1])) if sentences else []
            ans = _fmt_number(found[0]) if len(found) == 1 else None  # the one number of the last sentence
        return ans

    def verdict(self, row: dict[str, Any], response: str, protocol: str = "official") -> Verdict:
        check_protocol(protocol)
        if protocol == "official":
            pred, ok = mathvista_official.official_verdict(row, response)
            return Verdict(pred, ok, "official")
        return self.score(row, response)

    def score(self, row: dict[str, Any], response: str) -> Verdict:
        """The strict protocol."""
        pred = normalize_prediction(self.extract(row, response), row)
        return Verdict(pred, pred is not None and pred == str(row["answer"]))

    def aggregate(self, rows, verdicts):
        correct = sum(v.correct for v in verdicts)
        breakdown: dict[str, Any] = {"correct": correct, "total": len(verdicts)}
        for key in BREAKDOWN_KEYS:
            by = accuracy_by(rows, verdicts, lambda r, k=key: _meta(r, k))
            if by:
                breakdown[key] = by
        return (correct / len(verdicts) if verdicts else 0.0), breakdown
