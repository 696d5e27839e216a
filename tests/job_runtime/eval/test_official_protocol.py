"""The `official` scoring protocol: each rule on a real dev row that exercises it (../shared/eval-gold,
named by source model and id in the test name), the authors' normalisation functions on hand-made
cases, and the whole dev sets against the official verdicts. The rules never look at ids or models:
the ids here only pick the rows."""

from __future__ import annotations

import gzip
import json
from functools import lru_cache

import pytest

from job_runtime.eval.benchmarks import mathvista_official as mvo
from job_runtime.eval.benchmarks.latex_value import latex_value
from job_runtime.eval.benchmarks.mathvision_official import (
    eval_tuple, find_math_answer, official_answer, official_equal, strip_string,
)
from job_runtime.eval.benchmarks.registry import get
from job_runtime.eval.benchmarks.scoring import score_rows
from tests.conftest import require_shared


@lru_cache(maxsize=2)
def _gold(name: str) -> dict[tuple[str, str], dict]:
    path = require_shared("eval-gold", f"{name}_dev.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    key = "pid" if name == "mathvista" else "id"
    return {(r["source_model"], str(r[key])): r for r in rows}


def _mathv(model: str, item: str) -> tuple[str, bool, bool]:
    row = _gold("mathvision")[(model, item)]
    v = get("mathvision").verdict(row, row["response"], "official")
    return v.extracted, v.correct, row["official_correct"]


def _vista(model: str, pid: str) -> tuple[str | None, bool, bool]:
    row = _gold("mathvista")[(model, pid)]
    v = get("mathvista").verdict(row, row["response"], "official")
    return v.extracted, v.correct, row["official_correct"]


# --- MATH-V: evaluate.py's reading of a response, on real rows ------------------------------------


def test_mathvision_gemini_106_a_response_ending_in_a_letter_is_that_letter():
    assert _mathv("Gemini-Pro", "106") == ("e", True, True)


def test_mathvision_gemini_805_the_answer_is_flag_cuts_at_the_sentence():
    assert _mathv("Gemini-Pro", "805") == ("c", True, True)


def test_mathvision_chatgpt_2711_several_boxes_only_the_last_counts():
    assert _mathv("ChatGPT3.5-CoT (Text+Image Caption)", "2711") == ("25", True, True)


def test_mathvision_chatgpt_19_the_right_option_text_counts():
    assert _mathv("ChatGPT3.5-CoT (Text+Image Caption)", "19") == ("24", True, True)


def test_mathvision_chatgpt_2449_values_agree_to_two_decimals():
    assert _mathv("ChatGPT3.5-CoT (Text+Image Caption)", "2449") == ("0.422", True, True)


def test_mathvision_qwen_max_2979_a_degree_sign_is_not_removed_so_39_degrees_is_wrong():
    assert _mathv("Qwen-VL-Max", "2979") == ("39°", False, False)


def test_mathvision_chatgpt_2822_a_fraction_of_huge_powers_is_evaluated():
    assert _mathv("ChatGPT3.5-CoT (Text+Image Caption)", "2822")[1:] == (True, True)


def test_mathvision_internlm_1004_the_parse_stops_at_an_unmatched_brace():
    ans, ok, official = _mathv("InternLM-XComposer2-VL", "1004")
    assert ans.startswith("\\frac{1}{4}}") and ok is official is True


# --- MATH-V: utils.py's functions on hand-made cases ------------------------------------------------


def test_find_math_answer_and_strip_string():
    assert find_math_answer("The area is $12\\text{ cm}^2$") == "theareais12{cm}^2"  # "\\text" goes first
    assert find_math_answer("x \\approx 3.14") == "3.14"
    assert find_math_answer("\\boxed{\\dfrac{3}{4}}") == "\\frac{3}{4}"
    assert strip_string("\\frac12") == "\\frac12"  # braces are fixed only when "sqrt" is present
    assert strip_string("\\sqrt2/2") == "\\sqrt{2}/2" and strip_string(".5") == "\\frac{1}{2}"


def test_official_answer_rules():
    assert official_answer("So the answer is (B).") == "b"
    assert official_answer("Thus x is 7.") == "7"
    assert official_answer("I think the answer is 12. Then more text") == "12"
    assert official_answer("B\nbecause ...") == "b"
    assert official_answer("\\boxed{1} first, then \\boxed{2}") == "2"


def test_official_equal_and_latex_values():
    assert official_equal("\\frac{1}{3}", "0.33") and official_equal("1000", "1,000")
    assert not official_equal("5", "5cm") and not official_equal("50", "50%")
    assert official_equal("(1,2)", "(1.0,2)") and not official_equal("(1,2)", "(2,1)")
    assert eval_tuple("(\\sqrt{4},1)") == "(2.0,1)"  # sqrt gives a float, as Python's eval of sympy's str does
    assert latex_value("12:5") == 2.4 and latex_value("8.since") == 8 and latex_value("3!") == 6
    assert latex_value("\\ln 2") is None and latex_value("e^{2}") == 7.39 and latex_value("5 \\%") is None


def test_mathvision_whole_dev_set_agrees_with_the_official_verdicts():
    rows = list(_gold("mathvision").values())
    verdicts = score_rows(get("mathvision"), rows, [r["response"] for r in rows], protocol="official")
    agree = sum(v.correct == r["official_correct"] for v, r in zip(verdicts, rows)) / len(rows)
    assert agree >= 0.997


# --- MathVista: the stand-in for GPT-4's extraction, on real rows ----------------------------------


def test_mathvista_llama_adapter_734_yes_in_prose_is_yes():
    assert _vista("llama_adapter_v2", "734") == ("Yes", True, True)


def test_mathvista_llama_adapter_892_no_in_prose_is_no():
    assert _vista("llama_adapter_v2", "892") == ("No", True, True)


def test_mathvista_llavar_450_the_option_the_sentence_names():
    assert _vista("llavar", "450") == ("grasshoppers", True, True)


def test_mathvista_bard_441_a_bold_number():
    assert _vista("bard", "441") == ("9", True, True)


def test_mathvista_gpt4_644_no_answer_is_na_which_the_nearest_option_rule_maps():
    assert _vista("gpt4_2shot_solution", "644")[1:] == (True, True)


def test_mathvista_chatgpt_589_the_result_after_the_last_equals():
    assert _vista("chatgpt_2shot_solution", "589") == ("12", False, False)


# --- MathVista: calculate_score.py's normalisation on hand-made cases --------------------------------


@pytest.mark.parametrize("extraction,row,expected", [
    ("(B) 4", {"question_type": "multi_choice", "choices": ["3", "4"]}, "4"),
    ("B", {"question_type": "multi_choice", "choices": ["3", "4"]}, "4"),
    ("b", {"question_type": "multi_choice", "choices": ["3", "4"]}, "3"),  # not an option letter: nearest text
    ("N/A", {"question_type": "multi_choice", "choices": ["Yes", "No"]}, "No"),
    ("3.9", {"question_type": "free_form", "answer_type": "integer"}, "3"),  # int(float(x)) truncates
    ("1,000", {"question_type": "free_form", "answer_type": "integer"}, None),
    ("2.25", {"question_type": "free_form", "answer_type": "float", "precision": 1}, "2.2"),  # round half even
    ("0.5", {"question_type": "free_form", "answer_type": "float", "precision": 2}, "0.5"),
    ("[1, 2]", {"question_type": "free_form", "answer_type": "list"}, "[1, 2]"),
])
def test_mathvista_normalisation(extraction, row, expected):
    assert mvo.normalize(extraction, row) == expected


def test_mathvista_whole_dev_set_agreement_and_per_model_gap():
    rows = list(_gold("mathvista").values())
    verdicts = score_rows(get("mathvista"), rows, [r["response"] for r in rows], protocol="official")
    agree = sum(v.correct == r["official_correct"] for v, r in zip(verdicts, rows)) / len(rows)
    gaps = []
    for m in {r["source_model"] for r in rows}:
        pairs = [(v.correct, r["official_correct"]) for v, r in zip(verdicts, rows) if r["source_model"] == m]
        gaps.append(abs(sum(a for a, _ in pairs) - sum(b for _, b in pairs)) / len(pairs) * 100)
    assert agree >= 0.975 and sum(gaps) / len(gaps) <= 1.0  # issue 13 bars; bench/official_agreement.py prints the figures


def test_protocols_differ_and_are_checked():
    row = _gold("mathvision")[("Qwen-VL-Max", "2979")]
    bench = get("mathvision")
    assert not bench.verdict(row, row["response"], "official").correct
    assert bench.verdict(row, row["response"], "strict").correct  # "39°" is 39 to the strict scorer
    with pytest.raises(ValueError, match="eval.protocol"):
        bench.verdict(row, row["response"], "lenient")


def test_mathvista_yes_or_no_leading_the_answer_wins_over_a_later_negation():
    assert mvo.yes_no("Yes, it is not smaller than the other bar.", ["Yes", "No"]) == "Yes"
    assert mvo.yes_no("The bar is not the tallest.", ["yes", "no"]) == "no"
