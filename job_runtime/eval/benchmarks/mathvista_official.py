"""MathVista's official scoring: a judge-free stand-in for its GPT-4 answer extraction, then the
authors' normalisation, rule for rule.

The authors (lupantech/MathVista evaluation/extract_answer.py) ask GPT-4 to extract the answer from
a response, then evaluation/calculate_score.py normalises the extraction and compares strings:

- ``normalize_extracted_answer`` (`normalize`): multiple choice: the first "(x)" in the extraction
  becomes its letter; a letter naming an option becomes that option's text, anything else the
  option nearest by Levenshtein distance (the first on ties), so even "N/A" names an option;
  integer: ``str(int(float(x)))`` (truncation; 8 of the 9 dev models were scored by an older
  ``int(x)``, which rejects "3.0": the only difference, 5 of 9,000 dev rows); float:
  ``str(round(float(x), precision))``; list: ``str(x)``; anything unparsable is None (wrong);
- ``safe_equal``: the prediction must equal the answer string exactly.

`extract` stands in for GPT-4 (its prompt: lupantech/MathVista evaluation/prompts/ext_ans.py, few-shot
examples that extract "14", "0.6", "1.45", "[2007, 2008]" and, for a multiple-choice "The correct answer
is (B) 8/11", the letter "B"): extract_answer.py's own quick rules first (a response equal to an option,
a response that is a number), then, in this order, what GPT-4 did with the dev set's responses
(../shared/eval-gold; each behaviour a named rule in job_runtime.eval.benchmarks.mathvista_reading and
mathvista_choices):

1. the part of the response it reads: a model that went on with a question it made up is read at that
   question's answer (the value its conclusion states, else its letter);
2. multiple choice: an explicit answer (a box, "the answer is") as a letter, or a letter or option it
   holds; a leading Yes/No; a letter a phrase names ("the correct option letter for ... is C", "选项B",
   "(D)", even a letter beyond the options); a refusal ("N/A", or the "Cannot be determined" the
   response says); no option fitting ("N/A"); yes/no prose (the comparison it states, a negation); an
   option the conclusion names (by the words that set it apart, or its whole text of figures); a time
   in clock words; else the number the conclusion states (one that is an option's value first);
3. numbers: a refusal is "N/A"; the number the conclusion states (the last stated result, a bold
   value, a range's end, a year when the question asks which year; several numbers stay whole);
4. a response with no answer is "N/A", which the nearest-option rule then maps, as it does for GPT-4's.

bench/official_agreement.py measures the agreement, what each rule adds per source model, a
leave-one-model-out figure, and the share of disagreement that is noise in the official verdicts.

>>> row = {"question_type": "multi_choice", "answer_type": "text", "choices": ["Yes", "No"], "answer": "No", "precision": None}
>>> official_verdict(row, "No, New Jersey does not have a higher value than Georgia.")
('No', True)
>>> official_verdict({"question_type": "free_form", "answer_type": "integer", "answer": "9", "choices": None,
...                   "precision": None}, "So the perimeter is 3 + 3 + 3 = **9 yards**.\\n\\nAnything else?")
('9', True)
"""

from __future__ import annotations

import re
from typing import Any

from job_runtime.eval.answers import LETTERS, choice_letter, clean_answer, edit_distance, find_answer
from job_runtime.eval.benchmarks.mathvista_choices import (
    CLOCK,
    LEADING_YES_NO,
    MADE_UP,
    OPTION_NUMBER,
    answer_part,
    clock_word,
    leading_yes_no,
    letter_stated,
    made_up_answer,
    named_option,
    option_at,
    option_number,
    yes_no,
)
from job_runtime.eval.benchmarks.mathvista_reading import (
    NO_ANSWER,
    NONE_FITS,
    OFF,
    REFUSAL,
    RULES,
    declined,
    free_form,
    list_answer,
    none_fits,
    number_answer,
    on,
    rule,
    sentences,
)

__all__ = ["NO_ANSWER", "OFF", "RULES", "extract", "named_option", "nearest_option", "normalize", "official_verdict",
           "yes_no"]

# --- the authors' normalisation (calculate_score.py) -------------------------------------------


def nearest_option(text: str, choices: list[str]) -> str:
    """get_most_similar: the option at the smallest Levenshtein distance, the first on ties.

    >>> nearest_option("N/A", ["Yes", "No"]), nearest_option("quarter pas", ["half", "quarter past"])
    ('No', 'quarter past')
    """
    dists = [edit_distance(text, str(c)) for c in choices]
    return choices[dists.index(min(dists))]


def normalize(extraction: Any, row: dict[str, Any]) -> str | None:
    """normalize_extracted_answer on one extraction (see the module doc).

    >>> mc = {"question_type": "multi_choice", "choices": ["3", "4", "5"]}
    >>> normalize("(b) four", mc), normalize("C", mc), normalize("7", mc), normalize("c", mc)
    ('4', '5', '3', '3')
    >>> fl = {"question_type": "free_form", "answer_type": "float", "precision": 1}
    >>> normalize("2.25", fl), normalize("1e3", fl), normalize("12 cm", fl)
    ('2.2', '1000.0', None)
    >>> normalize("3.9", {"question_type": "free_form", "answer_type": "integer"})
    '3'
    """
    qtype, atype = row.get("question_type"), row.get("answer_type")
    if qtype == "multi_choice":
        choices = [str(c) for c in row.get("choices") or []]
        text = extraction.strip() if isinstance(extraction, str) else str(extraction)
        letters = re.findall(r"\(([a-zA-Z])\)", text)
        if letters:
            text = letters[0].upper()
        options = [chr(ord("A") + i) for i in range(len(choices))]
        if text in options:
            return choices[options.index(text)]
        return nearest_option(text, choices) if choices else None
    try:
        if atype == "integer":
            return str(int(float(extraction)))
        if atype == "float":
            return str(round(float(extraction), int(row.get("precision") or 0)))
    except (TypeError, ValueError, OverflowError):
        return None
    if atype == "list":
        return None if extraction is None else str(extraction)
    return extraction


# --- the stand-in for GPT-4's extraction (the rules: mathvista_reading, mathvista_choices) ----------------


ANSWER_READ = rule("answer_read", "an explicit answer that is not an option is read further: a letter it names "
                    "('80°, 选项为D'), or an option it opens with ('\"soup.\" Soup has ...')")


def _multi_choice(response: str, choices: list[str], question: str = "") -> str:
    ans, _ = find_answer(response)
    if ans is not None:
        letter = choice_letter(ans, choices)
        if letter:
            return letter
        if on(ANSWER_READ):  # "80°, 选项为D", '"soup." Soup has ...'
            inner = letter_stated(ans, len(choices), choices)
            if inner:
                return inner
            i = option_at(clean_answer(ans), choices)
            if i is not None:
                return LETTERS[i]
        return ans
    if on(LEADING_YES_NO) and (yn := leading_yes_no(response, choices)) is not None:
        return yn
    letter = letter_stated(response, len(choices), choices)
    if letter:
        return letter
    if on(REFUSAL) and (refused := declined(sentences(response), choices)) is not None:
        return refused
    if on(NONE_FITS) and none_fits(response):
        return NO_ANSWER
    yn = yes_no(response, choices, question)
    if yn is not None:
        return yn
    named = named_option(response, choices, question)
    if named is not None:
        return named
    if on(CLOCK) and (word := clock_word(response, choices)) is not None:
        return word
    value = free_form(response)
    if on(OPTION_NUMBER) and value is not None:
        value = option_number(response, choices, value)
    return value if value is not None else NO_ANSWER


def extract(row: dict[str, Any], response: str) -> str:
    """The stand-in for GPT-4's extraction (see the module doc); "" for an empty response."""
    resp = response or ""
    if not resp:
        return ""
    choices = [str(c) for c in row.get("choices") or []]
    if resp not in choices:
        resp, made_up = answer_part(row, resp)
        if made_up and on(MADE_UP):
            return made_up_answer(resp)
    if row.get("question_type") == "multi_choice" and resp in choices:
        return resp
    atype = row.get("answer_type")
    if atype == "integer":
        try:
            return str(int(resp))
        except ValueError:
            pass
    if atype == "float":
        try:
            return str(float(resp))
        except ValueError:
            pass
    if row.get("question_type") == "multi_choice" and choices:
        return _multi_choice(resp, choices, str(row.get("question") or ""))
    if atype in ("integer", "float"):
        return number_answer(resp, str(row.get("question") or ""))
    if atype == "list":
        return list_answer(resp)
    ans, _ = find_answer(resp, lenient=True)
    return ans if ans is not None else NO_ANSWER


def official_verdict(row: dict[str, Any], response: str) -> tuple[str | None, bool]:
    """(normalised prediction, correct) under the official protocol; the prediction is None when the
    response holds no answer (the verdict still follows the authors' normalisation of "N/A")."""
    ext = extract(row, response)
    pred = normalize(ext, row)
    ok = pred is not None and pred == str(row["answer"])
    return (None if ext in (NO_ANSWER, "") else pred), ok
