"""The rules of MathVista's stand-in for the GPT-4 extraction (job_runtime.eval.benchmarks.mathvista_reading),
each on real dev rows (../shared/eval-gold) named by pid in the test name: with the rule the verdict agrees with
the official one, and with the rule switched off (`OFF`, the same switch the agreement bench uses) the
extraction changes and the agreement is lost, so each test fails when its rule is removed. The rules never
look at ids or models: the ids here only pick the rows. Rows from two source models where the dev set has them."""

from __future__ import annotations

import gzip
import json
from contextlib import contextmanager
from functools import lru_cache

import pytest

from job_runtime.eval.benchmarks import mathvista_official as mvo
from job_runtime.eval.benchmarks import mathvista_choices as ch
from job_runtime.eval.benchmarks import mathvista_reading as rd
from tests.conftest import require_shared


@lru_cache(maxsize=1)
def _gold() -> dict[tuple[str, str], dict]:
    path = require_shared("eval-gold", "mathvista_dev.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return {(r["source_model"], r["pid"]): r for r in map(json.loads, f)}


@contextmanager
def rule_off(name: str):
    assert name in rd.RULES, name
    rd.OFF.add(name)
    try:
        yield
    finally:
        rd.OFF.discard(name)


def _read(model: str, pid: str) -> tuple[str, bool]:
    """(extraction, whether the verdict agrees with the official one)."""
    row = _gold()[(model, pid)]
    pred, correct = mvo.official_verdict(row, row["response"])
    return mvo.extract(row, row["response"]), correct == row["official_correct"]


def _decides(rule: str, model: str, pid: str, with_rule: str, without: str) -> None:
    assert _read(model, pid) == (with_rule, True)
    with rule_off(rule):
        assert _read(model, pid) == (without, False)


# --- letters and explicit answers -------------------------------------------------------------------------


def test_letter_phrases_mplugowl_371_the_solution_is_b():
    _decides("letter_phrases", "mplugowl_7b_ft", "371", "B", "5")  # "The solution is B: 5"


def test_letter_phrases_llavar_160_the_correct_option_letter_is_c():
    _decides("letter_phrases", "llavar", "160", "C", "N/A")


def test_letter_phrases_claude_681_the_option_letter_after_the_named_city():
    _decides("letter_phrases", "claude", "681", "D", "N/A")  # "... is Tokyo.\n\nThe option letter is D."


def test_letter_phrases_chatgpt_274_a_full_width_parenthesised_letter():
    _decides("letter_phrases", "chatgpt_2shot_solution", "274", "D", "10")  # "正确选项是（D）10。"


def test_letter_phrases_llavar_105_a_letter_beyond_the_options_is_kept():
    row = _gold()[("llavar", "105")]  # yes/no question: "The correct option letter is D. ..."
    assert mvo.extract(row, row["response"]) == "D" and mvo.normalize("D", row) == "no"


def test_answer_colon_mplugowl_155_a_leading_a_colon_is_answer():
    _decides("answer_colon", "mplugowl_7b_ft", "155", "no", "A")  # "A: no"


def test_answer_read_llama_adapter_140_an_answer_opening_with_an_option():
    _decides("answer_read", "llama_adapter_v2", "140", "A", 'soup." Soup typically contains very few carbs, if any, '
             "compared to other foods like sandwiches, buns, or water")


def test_answer_read_chatgpt_986_a_letter_inside_the_answer():
    _decides("answer_read", "chatgpt_2shot_solution", "986", "D", "55°，对应选项是D")


def test_article_a_llama_adapter_279_and_mplugowl_82_a_leading_article_is_not_option_a():
    _decides("article_a", "llama_adapter_v2", "279", "grasshopper", "A")  # "A decrease in sunlight would ..."
    _decides("article_a", "mplugowl_7b_ft", "82", "C", "A")  # "A square is inscribed ... the correct option letter is C"


def test_leading_yes_no_llama_adapter_456_wins_over_a_later_letter():
    _decides("leading_yes_no", "llama_adapter_v2", "456", "no", "A")  # "No, ... The minimum color is A."


# --- refusals and no fitting option --------------------------------------------------------------------------


def test_refusal_gpt4_465_a_response_that_cannot_answer_is_na():
    _decides("refusal", "gpt4_2shot_solution", "465", "N/A", "no")


def test_refusal_chatgpt_844_copies_cannot_be_determined():
    _decides("refusal", "chatgpt_2shot_solution", "844", "Cannot be determined", "No")


def test_refusal_gpt4_217_a_free_form_refusal_has_no_number():
    row = _gold()[("gpt4_2shot_solution", "217")]
    assert mvo.extract(row, row["response"]) == "N/A"  # "... the degree of the function is 2. Without the
    with rule_off("refusal"):                          # specific function, it's impossible to provide the degree."
        assert mvo.extract(row, row["response"]) == "2"


def test_left_open_gpt4_105_and_llavar_319_cannot_determine_whether_is_b():
    _decides("left_open", "gpt4_2shot_solution", "105", "B", "N/A")  # "... to determine whether Dark Violet ..."
    _decides("left_open", "llavar", "319", "B", "Cannot be determined")  # "it cannot be determined for certain that"


def test_left_open_llavar_239_a_restated_question_is_b():
    _decides("left_open", "llavar", "239", "B", "yes")  # the response is "Is Sky Blue the minimum?"


def test_none_fits_gpt4_403_no_option_matches_the_result():
    _decides("none_fits", "gpt4_2shot_solution", "403", "N/A", "31")


# --- options named in prose ------------------------------------------------------------------------------


def test_option_words_mplugowl_125_the_words_that_set_an_option_apart():
    # "If caterpillars decrease, plants will increase."
    _decides("option_words", "mplugowl_7b_ft", "125", "plants increase", "plants decrease")


def test_option_words_llama_adapter_783_a_whole_option_of_symbols():
    _decides("option_words", "llama_adapter_v2", "783", "30√{3}m", "(30√{3}+30)m")


def test_option_words_llavar_647_a_capital_letter_names_a_lettered_option():
    _decides("option_words", "llavar", "647", "A", "B")


def test_comparison_llavar_555_the_other_comparison_is_no():
    _decides("comparison", "llavar", "555", "No", "Yes")  # "The nest is smaller than a fist."


def test_comparison_mplugowl_825():
    _decides("comparison", "mplugowl_7b_ft", "825", "No", "Yes")


def test_clock_llama_adapter_477_and_llavar_477_a_time_in_clock_words():
    _decides("clock", "llama_adapter_v2", "477", "quarter past", "15")  # "The clock is 3:15."
    _decides("clock", "llavar", "477", "quarter past", "12")


def test_option_number_llavar_853_the_number_that_is_an_option():
    _decides("option_number", "llavar", "853", "12", "24")  # "The perimeter of the diamond ABCD is 12 + 12 = 24."


# --- numbers ---------------------------------------------------------------------------------------------


def test_last_stated_mplugowl_619_and_llama_adapter_978():
    _decides("last_stated", "mplugowl_7b_ft", "619", "16", "4")
    _decides("last_stated", "llama_adapter_v2", "978", "7", "1")  # "The range of the numbers is 1 to 7."


def test_expression_chatgpt_534_an_answer_in_a_variable_stays_whole():
    _decides("expression", "chatgpt_2shot_solution", "534", "(n/2) + 1", "1")  # "the answer is (n/2) + 1."


def test_counted_mplugowl_624_and_bard_131_the_number_that_counts_what_is_asked():
    _decides("counted", "mplugowl_7b_ft", "624", "5", "1.6")  # "Yes, in 5 years ... greater than 1.6%."
    row = _gold()[("bard", "131")]  # "There are 3 bars below 40 ... values 58, 59, and 63": COUNTED, or else
    with rule_off("counted"), rule_off("answer_sentence"):  # ANSWER_SENTENCE, reads 3
        assert mvo.extract(row, row["response"]) == "58"
    assert _read("bard", "131") == ("3", True)


def test_answer_sentence_bard_784_and_mplugowl_720_the_opening_sentence_answers():
    _decides("answer_sentence", "bard", "784", "70", "60")  # "The maximum rating ... is **70**. ... to **60**"
    _decides("answer_sentence", "mplugowl_7b_ft", "720", "3", "2")  # "When the function value first reaches 2 ... x = 3."


def test_one_after_an_adjective_is_a_pronoun_gpt4_189():
    row = _gold()[("gpt4_2shot_solution", "189")]  # "... identify the smallest one.": no number, so N/A (not 1)
    assert mvo.extract(row, row["response"]) == "N/A"


def test_stated_first_llavar_816_a_stated_result_before_a_mentioned_number():
    _decides("stated_first", "llavar", "816", "12.25", "2")


def test_stated_list_mplugowl_472_several_numbers_stay_whole():
    _decides("stated_list", "mplugowl_7b_ft", "472", "9, 3", "3")


def test_year_claude_ocr_588_a_year_question_gets_the_year():
    _decides("year", "claude_2shot_solution_use_ocr", "588", "1982", "135883")


# --- made-up questions --------------------------------------------------------------------------------


def test_made_up_question_claude_ocr_554_reads_the_last_made_up_answer():
    _decides("made_up_question", "claude_2shot_solution_use_ocr", "554", "12", "yes")


def test_unanswered_made_up_claude_ocr_325_and_552_read_at_the_open_question():
    _decides("unanswered_made_up", "claude_2shot_solution_use_ocr", "325", "How many employees does Acme Inc have?\n\nImage:", "B")
    _decides("unanswered_made_up", "claude_2shot_solution_use_ocr", "552", "How many circles are in the image?", "4")


def test_made_up_value_claude_ocr_105_the_value_before_the_letter():
    _decides("made_up_value", "claude_2shot_solution_use_ocr", "105", "5", "5 apples")


# --- helpers on hand-made cases ---------------------------------------------------------------------------


def test_option_at_and_clock_words():
    assert ch.option_at("3.5, since", ["3", "3.5"]) == 1 and ch.option_at("3 cm", ["3", "3.5"]) == 0
    assert ch.option_at("none", ["yes", "no"]) is None
    clock = ["half", "quarter", "o'clock", "quarter to", "quarter past"]
    assert ch.clock_word("It shows 4:45.", clock) == "quarter to" and ch.clock_word("at 4:00", clock) == "o'clock"
    assert ch.clock_word("It shows 4:45.", ["A", "B"]) is None


def test_declined_phrases():
    assert rd.declined(["Thus, the answer cannot be determined."], ["Yes", "No"]) == "Cannot be determined"
    assert rd.declined(["The perimeter cannot be 38."], ["29", "38"]) is None  # a statement, not a refusal
    assert rd.declined(["It is not possible to predict."], ["decrease", "can't predict"]) == "can't predict"


def test_every_rule_is_registered_with_what_it_does():
    assert len(rd.RULES) >= 15 and all(len(what) > 20 for what in rd.RULES.values())
    assert not rd.OFF


@pytest.mark.parametrize("name", sorted(rd.RULES))
def test_rule_switch_restores(name):
    with rule_off(name):
        assert name in rd.OFF
    assert name not in rd.OFF


def test_doctests_pass():
    import doctest

    for mod in (mvo, rd, ch):
        result = doctest.testmod(mod)
        assert result.attempted >= 3 and result.failed == 0, mod.__name__
