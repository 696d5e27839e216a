"""job_runtime.eval.answers and job_runtime.eval.benchmarks.numbers: extraction order, cleaning, choices,
numbers and equivalence, rule by rule."""

from __future__ import annotations

import doctest
import inspect
import threading

import pytest

from job_runtime.eval import answers
from job_runtime.eval.answers import (
    choice_letter,
    clean_answer,
    extract_answer,
    extract_choice,
    find_answer,
    is_correct,
    last_boxed,
    math_equal,
    nearest_choice,
)
from job_runtime.eval.benchmarks import numbers
from job_runtime.eval.benchmarks.numbers import to_number


def test_doctests_pass():
    for mod in (answers, numbers):
        result = doctest.testmod(mod)
        assert result.attempted > 5 and result.failed == 0, mod.__name__


def test_reward_facing_signatures_are_stable():
    # rewards.py (training) imports these two: their positional signatures must not change
    assert list(inspect.signature(extract_answer).parameters)[0] == "text"
    assert list(inspect.signature(is_correct).parameters) == ["pred", "gold", "choices"]


# --- extraction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected,method",
    [
        ("<think>maybe \\boxed{3}</think> so \\boxed{4}", "4", "boxed"),
        ("<think>it is \\boxed{3}</think> The answer is 5.", "5", "phrase"),  # the final part wins
        ("<think>it is \\boxed{3}</think> I am not sure.", "3", "boxed"),  # reasoning as a last resort
        ("<answer>\\boxed{\\frac{1}{2}}</answer>", "\\frac{1}{2}", "boxed"),
        ("blah <answer> 12 </answer>", "12", "tag"),
        ("so \\boxed{\\text{(B)}}", "(B)", "boxed"),
        ("\\fbox{7}", "7", "boxed"),
        ("Therefore, the answer is (C).", "(C)", "phrase"),
        ("The final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}", "phrase"),
        ("Steps...\n**Final Answer:** 12 cm", "12 cm", "phrase"),
        ("Steps...\n**Final Answer**\n\n42", "42", "phrase"),
        ("Answer: B", "B", "phrase"),
        ("> Answer: 3.5", "3.5", "phrase"),
        ("The correct option is D because it fits.", "D", "phrase"),
        ("The answer is 1,000 since each costs 10.", "1,000", "phrase"),
        ('The answer is "yes".', "yes", "phrase"),
        ("答案是 5", "5", "phrase"),
    ],
)
def test_extraction_order_and_forms(text, expected, method):
    assert find_answer(text) == (expected, method)


def test_last_of_several_phrases_wins():
    assert extract_answer("First the answer is 3.\nWait, recheck.\nSo the answer is 4.") == "4"


def test_no_answer_is_none_unless_lenient():
    text = "Counting the apples one by one, so there are 7 apples."
    assert extract_answer(text) is None
    assert find_answer(text, lenient=True) == ("7 apples", "lenient")
    assert extract_answer("B", lenient=True) == "B"
    assert extract_answer("Long reasoning line.\nSo the result is **12**.", lenient=True) == "12"
    assert extract_answer("", lenient=True) is None and extract_answer(None) is None


def test_to_answer_this_question_is_not_a_phrase():
    assert extract_answer("To answer this question, we count the cubes.") is None


def test_last_boxed_balanced_and_unbraced():
    assert last_boxed("\\boxed{\\frac{\\sqrt{3}}{2}}") == "\\frac{\\sqrt{3}}{2}"
    assert last_boxed("\\boxed 5.") == "5"
    assert last_boxed("\\boxed{unclosed") is None


def test_clean_answer_strips_wrappers():
    assert clean_answer("**(B).**") == "(B)"
    assert clean_answer("$\\boxed{5}$") == "5"
    assert clean_answer("“Yes”") == "Yes"


# --- choices -------------------------------------------------------------------------------------


@pytest.mark.parametrize("said", ["B", "(B)", "B.", "B)", "b", "(b)", "Option B", "option (B)", "B. 145°", "(B) 145°",
                                  "\\text{B}", "$\\text{(B)}$", "145°", "145", "[B]"])
def test_choice_letter_forms(said):
    assert choice_letter(said, ["135°", "145°", "150°"]) == "B"


def test_bare_letter_is_a_position_even_when_options_are_letters():
    # MathVista pid 168 lists '(c)', '(a)', ...: "(B)" names the second position, as upstream reads it
    assert choice_letter("(B)", ["(c)", "(a)", "(e)"]) == "B"
    assert choice_letter("A triangle", ["A square", "A triangle"]) == "B"  # option text starting "A "
    assert choice_letter("F", n=4) is None


def test_extract_choice_reads_letters_in_last_line_when_no_phrase():
    assert extract_choice("Long reasoning here about the figure and lengths.\nI pick (C) here.", n=4)[0] == "C"
    assert extract_choice("nothing to choose", n=4)[0] is None


def test_nearest_choice_is_upstreams_edit_distance():
    assert nearest_choice("quarter to", ["half", "quarter", "quarter to"]) == "quarter to"
    assert nearest_choice("", ["ab", "a"]) == "a"


# --- numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,value",
    [
        ("1,000", 1000.0),
        ("1{,}000", 1000.0),
        ("$4.00", 4.0),
        ("25%", 25.0),
        ("6 cm", 6.0),
        ("12 square units", 12.0),
        ("3.5 m^2", 3.5),
        ("45^\\circ", 45.0),
        ("45°", 45.0),
        ("69{degrees}", 69.0),
        ("x = 0.5", 0.5),
        ("Area $=113.1 \\mathrm{~cm}^{2}$", 113.1),
        ("\\dfrac{3}{4}", 0.75),
        ("\\frac12", 0.5),
        ("\x0crac{36}{13}", 36 / 13),  # "\f" read as a form feed in the official file
        ("-\\frac{24}{25}", -0.96),
        ("1/2", 0.5),
        ("2\\pi", 2 * 3.141592653589793),
        ("5\\sqrt{3}", 5 * 3**0.5),
        ("\\sqrt[3]{8}", 2.0),
        ("2(\\sqrt{2}-1)", 2 * (2**0.5 - 1)),
        ("1.5 \\times 10^{3}", 1500.0),
        ("\\boxed{\\frac{16}{7}}", 16 / 7),
        ("about 7", 7.0),
        ("twelve", 12.0),
    ],
)
def test_to_number(text, value):
    assert to_number(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["x + 1", "(3, -4)", "1:2", "a dozen", "", "2\\pi r", "S 23.5 ^\\circ W"])
def test_not_a_number(text):
    assert to_number(text) is None


# --- equivalence ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred,gold",
    [
        ("1/2", "0.5"),
        ("\\frac{1}{2}", "0.5"),
        ("0.50", "\\frac12"),
        ("1,000", "1000"),
        ("1000 m", "1000"),
        ("50%", "0.5"),
        ("45°", "45"),
        ("(1, 2)", "[1,2]"),
        ("x = 3", "3"),
        ("Yes", "yes"),
        ("x^2+2x+1", "(x+1)^2"),  # math-verify
        ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}"),
    ],
)
def test_equal(pred, gold):
    assert is_correct(pred, gold)


@pytest.mark.parametrize(
    "pred,gold",
    [
        ("0.33", "\\frac{1}{3}"),  # a rounded decimal is not exact
        ("7", "8"),
        ("2309415689", "2309415687"),  # big integers are exact, not relatively close
        ("(1, 2)", "(2, 1)"),
        ("Yes", "No"),
        ("x+1", "2"),
        ("3", "(3, 4)"),
        ("12", "domain: [0, 12]"),
    ],
)
def test_not_equal(pred, gold):
    assert not is_correct(pred, gold)


def test_choices_both_ways():
    choices = ["135°", "145°", "150°"]
    assert is_correct("B", "145°", choices)
    assert is_correct("145°", "B", choices)
    assert is_correct("(B) 145", "B", choices)
    assert not is_correct("C", "145°", choices)
    assert not is_correct(None, "B", choices)


def test_math_verify_runs_outside_the_main_thread():
    math_equal.cache_clear()
    answers._math_verify.cache_clear()
    out = []
    t = threading.Thread(target=lambda: out.append(is_correct("x^2-1", "(x-1)(x+1)")))
    t.start()
    t.join()
    assert out == [True]


@pytest.mark.parametrize("response, expected", [
    ("First try: \\boxed{3}.\nWait, I counted one square twice.\nFinal answer: 4", "4"),
    ("Maybe \\boxed{3}?\nChecking again...\n**Final Answer:** (B)", "(B)"),
    ("Thus the final answer is \\boxed{5}.", "5"),  # the box is the final statement
    ("Final answer: 7\nDouble-check: \\boxed{7}", "7"),
    ("\\boxed{2}\nThe final answer is \\boxed{6}.", "6"),
    ("Step 1 gives \\boxed{3}.\nAnswer: 4", "3"),  # only an explicit 'final answer' overrides a box
])
def test_a_final_answer_after_a_revised_box_wins(response, expected):
    assert extract_answer(response) == expected


def test_a_response_cut_off_mid_sentence_names_no_option():
    from job_runtime.eval.answers import extract_choice

    cut = "Let me compare the angles. The angle at A looks like option (B), which would make the triangle"
    assert extract_choice(cut, n=4)[0] is None
    assert extract_choice(cut + " isosceles, so I pick (B).", n=4)[0] == "B"
