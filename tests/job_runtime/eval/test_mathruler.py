"""Our mathruler rules agree with the mathruler package itself (EasyR1's grader), case for case.

The ``mathruler`` package (a dev dependency, the reference) is imported as the oracle: every pair
below is graded by both, and every response's box is extracted by both. The groups hold forms
of one answer written the ways models write them, and near misses; pairs are taken within each
group (both orders: grading is not symmetric).
"""

from __future__ import annotations

import itertools

import pytest
from mathruler import grader as reference

from job_runtime.eval import mathruler

GROUPS = [
    ["7", "7.0", "07", "\\text{7}", "7 cm", "7^\\circ", "x = 7", "seven", "-7", "7%"],
    ["0.5", "\\frac{1}{2}", "\\dfrac12", "1/2", "2/4", ".5", "\\tfrac{1}{2}", "50\\%", "0.50"],
    ["1000", "1,000", "1{,}000", "1000.0", "10^3", "1 thousand", "1,000,000", "\\$1000"],
    ["(1, 2)", "(1,2)", "[1, 2]", "(2, 1)", "1, 2", "(1, 2, 3)", "\\left(1, 2\\right)", "(1,2]"],
    ["\\sqrt{2}", "\\sqrt2", "2^{1/2}", "1.414", "\\frac{\\sqrt{2}}{1}", "\\sqrt{8}/2", "sqrt(2)"],
    ["(x+1)^2", "x^2+2x+1", "x^2 + 2x + 1", "(x-1)^2", "x^{2}+2x+1", "1+2x+x^2", "x^2+2*x+1"],
    ["\\pi", "3.14", "\\frac{\\pi}{1}", "2\\pi/2", "pi", "180^\\circ"],
    ["A", "a", "(A)", "\\text{A}", "B", "A or B", "\\textbf{A}"],
    ["7 3/4", "7\\frac{3}{4}", "31/4", "7.75", "\\frac{31}{4}", "7+3/4"],
    ["3\\text{ meters}", "3", "3 m", "3 meters", "3.0 m", "\\text{3 m}"],
    ["2\\times 10^6", "2 million", "2000000", "2,000,000", "2e6"],
    ["\\infty", "inf", "\\infty ", "-\\infty", "\\frac{1}{0}"],
    ["", "None", "\\frac", "{}", "\\frac{1}"],
]
PAIRS = sorted({pair for group in GROUPS for pair in itertools.permutations(group, 2)} | {(f, f) for g in GROUPS for f in g})

RESPONSES = [
    "<think>a</think> \\boxed{7}",
    "\\boxed{1} and then \\boxed{2}",
    "\\boxed{\\frac{1}{2}} done",
    "\\boxed{ 3 }",
    "\\boxed{a{b}c}",
    "\\boxed{1",
    "the answer is 7",
    "\\boxed{}",
    "\\boxed {7}",
    "\\fbox{7}",
    "\\boxed{\\text{(A)}} \\boxed{B",
    "<think>\\boxed{9}</think> no more box",
]


@pytest.mark.parametrize("given, gold", PAIRS)
def test_grade_answer_agrees_with_mathruler(given, gold):
    assert mathruler.grade_answer(given, gold) == reference.grade_answer(given, gold), (given, gold)


@pytest.mark.parametrize("response", RESPONSES)
def test_extract_boxed_agrees_with_mathruler(response):
    assert mathruler.extract_boxed(response) == reference.extract_boxed_content(response)


def test_the_table_exercises_both_verdicts_and_each_rule():
    verdicts = [reference.grade_answer(a, b) for a, b in PAIRS]
    assert 40 < sum(verdicts) < len(verdicts) - 40
    # One pair per rule: MATH normaliser, PRM800K normaliser, sympy.
    assert mathruler.normalize_math("\\dfrac12") == mathruler.normalize_math("1/2")
    assert mathruler.normalize_math("7 cm") != mathruler.normalize_math("7") and mathruler.grade_answer("7 cm", "7")
    assert mathruler.normalize_prm("x^2+2x+1") != mathruler.normalize_prm("(x+1)^2")
    assert mathruler.grade_answer("x^2+2x+1", "(x+1)^2")


def test_accuracy_grades_the_collapsed_response_like_easyr1():
    # EasyR1 removes the spaces around '/' before extracting: "\boxed{1 / 2}" becomes "\boxed{1/2}".
    assert mathruler.accuracy("<think>.</think> \\boxed{1 / 2}", "\\frac{1}{2}") == 1.0
    assert mathruler.accuracy("The final answer is 1/2.", "\\frac{1}{2}") == 0.0
