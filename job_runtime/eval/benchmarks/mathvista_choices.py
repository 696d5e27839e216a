"""Reading a multiple-choice response the way GPT-4 did for MathVista's answer extraction: the letter a
response states, the option its words name, yes/no prose, clock words, and which part of a response that goes
on with questions of its own is read (job_runtime.eval.benchmarks.mathvista_official holds the order the rules
run in; the rule registry and the reading of numbers and refusals: job_runtime.eval.benchmarks.mathvista_reading).

No rule looks at an item id, a question's text as such, or the model that wrote the response.
"""

from __future__ import annotations

import re
from typing import Any

from job_runtime.eval.answers import LETTERS, find_answer
from job_runtime.eval.benchmarks.mathvista_reading import (
    CONCLUSION,
    LEFT_OPEN,
    LEFT_OPEN_READ,
    NEGATION,
    NO_ANSWER,
    STOP_WORDS,
    THEREFORE,
    asked_share,
    content_words,
    free_form,
    numbers_in,
    on,
    rule,
    sentences,
    stated_number,
    stem,
    yes_no_options,
)
from job_runtime.eval.benchmarks.numbers import to_number


COMPARISON = rule("comparison", "a yes/no question asking 'is X more/less than Y' answered by a statement of the "
                   "other comparison, or of equality, is No; of the same comparison, Yes")
_MORE = r"greater|more|larger|bigger|higher|taller|longer|wider|heavier|older|faster|above|exceeds?"
_LESS = r"less|fewer|smaller|lower|shorter|narrower|lighter|younger|slower|below"
_COMPARATIVE = re.compile(rf"\b(?:(?P<more>{_MORE})|(?P<less>{_LESS})|(?P<same>equal|same))\b", re.IGNORECASE)


def _comparison(text: str) -> str | None:
    m = _COMPARATIVE.search(text)
    return m.lastgroup if m else None


LEADING_YES_NO = rule("leading_yes_no", "a yes/no question answered with a leading 'Yes'/'No' is that answer, "
                       "whatever letter the response names after it")


def leading_yes_no(response: str, choices: list[str]) -> str | None:
    if not yes_no_options(choices):
        return None
    low = [c.strip().lower() for c in choices]
    m = re.match(r"[\W_]*(yes|no)\b", response, re.IGNORECASE)
    return choices[low.index(m.group(1).lower())] if m else None


def restates(response: str, question: str) -> bool:
    """Whether a response is only the question asked again: one line ending in '?', with 80% of its words.

    >>> restates("Is Sky Blue the minimum?", "Is Sky Blue the minimum?"), restates("Is it? No.", "Is it?")
    (True, False)
    """
    text = response.strip()
    return text.endswith("?") and "\n" not in text and asked_share(text, question) >= 0.8


def yes_no(response: str, choices: list[str], question: str = "") -> str | None:
    """Yes or No from prose: "B" for the question only restated (LEFT_OPEN), a leading yes/no, else the stated
    comparison (COMPARISON), else negation."""
    if not yes_no_options(choices):
        return None
    low = [c.strip().lower() for c in choices]
    sents = sentences(response)
    if not sents:
        return None
    if on(LEFT_OPEN) and restates(response, question):
        return LEFT_OPEN_READ
    first = re.sub(r"^[\W_]+", "", sents[0]).lower()
    for word in ("yes", "no"):
        if re.match(word + r"\b", first):
            return choices[low.index(word)]
    last = sents[-1] if len(sents) > 1 and CONCLUSION.search(sents[-1]) else sents[0]
    negated = bool(NEGATION.search(last))
    asked = _comparison(question) if on(COMPARISON) else None
    stated = _comparison(last) if asked in ("more", "less") else None
    if stated is not None:
        agrees = stated == asked
        return choices[low.index("yes" if agrees != negated else "no")]
    return choices[low.index("no" if negated else "yes")]


OPTION_WORDS = rule("option_words", "an option is named by the words that set it apart from the other options "
                     "(word endings aside; 'Solution A' keeps its capital), words the question already holds "
                     "counting half, or by its whole text ('5:30', '0.33%')")


def _tokens(text: str) -> list[str]:
    """Words for naming options: lower case, stop words out, endings off; a lone capital ('sample A') kept."""
    out = []
    for w in re.findall(r"[A-Za-z0-9]+", text):
        if len(w) == 1 and w.isupper():
            out.append(w)
        elif (low := w.lower()) not in STOP_WORDS:
            out.append(stem(low))
    return out


def _flat(text: str) -> str:
    """Text for whole-option matching: lower case, no braces, roots as '√', no spaces beside symbols
    ('6 \\sqrt { 2 }' -> '6√2', '(u1, u2) = (1, 0)' -> '(u1,u2)=(1,0)')."""
    t = re.sub(r"[{}]", "", text.lower().replace("\\sqrt", "√"))
    return re.sub(r"\s*([^\w\s])\s*", r"\1", " ".join(t.split()))


def _verbatim(sentence: str, choices: list[str]) -> str | None:
    """The option of figures and symbols, not words alone nor a bare number ('5:30', '0.33%', '(1, 0)', '2√{3}'),
    whose whole text the sentence holds: the longest, then the last."""
    flat = _flat(sentence)
    best, best_key = None, None
    for c in choices:
        opt = _flat(str(c))
        if re.fullmatch(r"[-+]?[\d.]+", opt) or not re.search(r"[^\w\s]|_", opt):
            continue  # numbers and words are read as numbers and words
        left = r"(?<![\w.])" if opt[0].isalnum() else ""
        right = r"(?![\w√])" if opt[-1].isalnum() else ""
        found = [m.start() for m in re.finditer(left + re.escape(opt) + right, flat)]
        if found and (best_key is None or (len(opt), found[-1]) > best_key):
            best, best_key = str(c), (len(opt), found[-1])
    return best


def _option_in(sentence: str, choices: list[str], question: str = "") -> str | None:
    """The option a sentence names (see OPTION_WORDS), or None."""
    if not on(OPTION_WORDS):
        return _option_in_v1(sentence, choices)
    whole = _verbatim(sentence, choices)
    if whole is not None:
        return whole
    words = _tokens(sentence)
    if not words:
        return None
    opts = [set(_tokens(str(c))) for c in choices]
    common = set.intersection(*opts) if len(opts) > 1 else set()
    words = _unasked(sentence, set(_tokens(question))) or words
    best, best_key = None, None
    for c, ow in zip(choices, opts):
        own = (ow - common) or ow
        if not own or not any(w.isalpha() for w in own):
            continue
        hits = [w for w in own if w in words]
        share = len(hits) / len(own)
        if share < 0.5 or (len(own) <= 2 and share < 1):
            continue
        key = (-share, min(words.index(w) for w in hits), -len(own))
        if best_key is None or key < best_key:
            best, best_key = str(c), key
    return best


def _unasked(sentence: str, asked: set[str]) -> list[str]:
    """The sentence's words without the clauses that only restate the question ("If pelicans increase, ...")."""
    out = []
    for clause in re.split(r"[,;:]", sentence):
        toks = _tokens(clause)
        if not toks or not set(toks) <= asked:
            out += toks
    return out


def _option_in_v1(sentence: str, choices: list[str]) -> str | None:
    """The option a sentence names: the most of its words present (all of a one-word option), earliest first."""
    words = content_words(sentence)
    if not words:
        return None
    best, best_key = None, None
    for c in choices:
        cw = content_words(str(c))
        if not cw or not any(w.isalpha() for w in cw):
            continue
        hits = [w for w in cw if w in words]
        share = len(hits) / len(cw)
        if share < 0.5 or (len(cw) <= 2 and share < 1):
            continue
        pos = min(words.index(w) for w in hits)
        key = (-share, pos, -len(cw))
        if best_key is None or key < best_key:
            best, best_key = str(c), key
    return best


def named_option(response: str, choices: list[str], question: str = "") -> str | None:
    """The option the answer sentence names: the first sentence of a short answer, else the conclusion."""
    sents = sentences(response)
    order = sents if len(sents) <= 3 else [s for s in reversed(sents) if CONCLUSION.search(s)] + sents[:1]
    for s in order:
        named = _option_in(s, choices, question)
        if named is not None:
            return named
    return None


CLOCK = rule("clock", "a time '3:15' answers options in clock words: quarter past, half, quarter to, o'clock")
_CLOCK_WORDS = ((0, "o'clock"), (15, "quarter past"), (30, "half"), (45, "quarter to"), (60, "o'clock"))


def clock_word(response: str, choices: list[str]) -> str | None:
    low = {c.strip().lower(): c for c in choices}
    if not {"half", "quarter past", "quarter to"} & set(low):
        return None
    times = re.findall(r"\b\d{1,2}:(\d{2})\b", response)
    if not times:
        return None
    minutes = int(times[-1])
    word = min(_CLOCK_WORDS, key=lambda mw: abs(mw[0] - minutes))[1]
    return low.get(word)


OPTION_NUMBER = rule("option_number", "of the numbers in the answer sentence, one that is an option's value is "
                      "read before one that is not ('peak of 40% at episode 2.5', options 1.0 ... 4.0: 2.5)")


def option_number(response: str, choices: list[str], value: str) -> str:
    values = [to_number(c) for c in choices]
    if sum(v is not None for v in values) < len(choices) - 1:
        return value  # options are not numbers
    v = to_number(value)
    if v is not None and any(o is not None and abs(o - v) < 1e-9 for o in values):
        return value
    sents = sentences(response)
    for s in [x for x in reversed(sents) if CONCLUSION.search(x)][:1] + sents[-1:]:
        if value not in [n for _, n in numbers_in(s)]:
            continue
        hits = [n for _, n in numbers_in(s) if (nv := to_number(n)) is not None
                and any(o is not None and abs(o - nv) < 1e-9 for o in values)]
        if len(set(hits)) == 1:
            return hits[0]
    return value


LETTER_PHRASES = rule("letter_phrases", "an option letter named by a phrase ('the correct option letter for ... is C', "
                      "'I will select \"B\"', '选项B', '（D）') is extracted, even a letter beyond the options")
_LETTER_LINE = re.compile(r"^\s*\(?([A-Z])\)?(?:[.:)]|\s*$|\s)")
_Q = r"[\"'“‘]?"
_L = r"[(（]?([A-Z])[)）]?"
_END = r"(?![\w'’])"
_LETTER_PHRASE = re.compile(
    r"(?:option|choice|answer)\s*(?:is|:|为|是)?\s*\(?([A-Z])\)?(?![\w])|\(([A-Z])\)", re.IGNORECASE)
_NAMED_LETTER = re.compile("|".join([
    r"(?:option|choice)\s+" + _Q + _L + _Q + _END,
    r"(?:option|choice|answer|letter|solution)s?(?:\s+letter)?(?:\s+(?![A-Z]\b)[\w'’-]+){0,8}?\s*(?:\bis|\bwould be|\bshould be"
    r"|\bwill be|:|：)\s*" + _Q + _L + _Q + _END,
    r"(?:select|choose|pick|go with|opt for)\s+(?:option\s+|choice\s+)?" + _Q + _L + _Q + _END,
    r"(?:选项|答案)[为是:：\s]*" + _L,
    r"(?:\bis|\bbe)\s+" + _L + r"(?=\s*[.!]?\s*$)",  # "... so the most likely count is C."
    r"(?<![\w])\(([A-Z])\)|（([A-Z])）",
]), re.IGNORECASE)


ANSWER_COLON = rule("answer_colon", "a response opening 'A:' (or 'A - ') reads as 'Answer:', not as option A")
ARTICLE_A = rule("article_a", "a response opening with the article 'A' ('A square is inscribed ...', 'A decrease in "
                 "sunlight ...') does not name option A")


_OPENERS = ("(", "（", '"', "'", "“", "‘")


def option_at(text: str, choices: list[str]) -> int | None:
    """The option whose text `text` starts with (the longest; case and spaces aside), else None.

    >>> option_at("3.5, since ...", ["3", "3.5"]), option_at("3 cm", ["3", "3.5"]), option_at("no", ["yes"])
    (1, 0, None)
    """
    t = re.sub(r"^[\s*:)\].-]+", "", text).lower()
    best, size = None, 0
    for i, c in enumerate(choices):
        opt = str(c).strip().lower()
        if not opt or not t.startswith(opt) or len(opt) <= size:
            continue
        nxt = t[len(opt) : len(opt) + 2]
        if nxt[:1].isalnum() or (nxt[:1] in ".," and nxt[1:2].isdigit()):
            continue  # "3" is not the start of "3.5" or "30"
        best, size = i, len(opt)
    return best


def _letter_or_text(letter: str, after: str, valid: str, choices: list[str] | None) -> str:
    """A stated letter; a letter beyond the options followed by an option's text is that option ('(D) yes')."""
    if letter not in valid and choices:
        i = option_at(after, choices)
        if i is not None:
            return LETTERS[i]
    return letter


def letter_stated(response: str, n: int, choices: list[str] | None = None) -> str | None:
    """The option letter a response states: a leading "(B)"/"B." , a last line "B", else the last sentence naming one."""
    valid = LETTERS[:n]
    text = response.strip()
    m = _LETTER_LINE.match(text)
    if m and not (on(ANSWER_COLON) and re.match(r"\s*A\s*(?::|\s-\s)", text)) \
            and not (on(ARTICLE_A) and re.match(r"\s*A\s+[a-z]", text)):
        if m.group(1) in valid:
            return _letter_or_text(m.group(1), text[m.end() :], valid, choices)
        if on(LETTER_PHRASES) and re.match(r"\s*\(?[A-Z](?:\)|\.\s)", text) and choices:
            i = option_at(text[m.end() :], choices)  # "C. No, Salmon is ...": the option it names
            if i is not None:
                return LETTERS[i]
    last = text.split("\n")[-1].strip(" *.")
    if len(last) <= 3 and (m := _LETTER_LINE.match(last)) and m.group(1) in valid:
        return m.group(1)
    if on(LETTER_PHRASES):  # a line that is only a letter ("Here is my response:\n\nC\n\n...")
        alone = {m.group(1) for m in re.finditer(r"^[\s*(]*([A-Z])[)*.\s]*$", text, re.MULTILINE)}
        if len(alone) == 1 and (letter := alone.pop()) in valid:
            return letter
    for s in reversed(sentences(text)):
        if on(LETTER_PHRASES):
            hits = []
            for m in _NAMED_LETTER.finditer(s):
                gi = next(i for i, g in enumerate(m.groups(), 1) if g)
                h = m.group(gi)
                if h in "AI" and not s[: m.start(gi)].endswith(_OPENERS) and re.match(r"\s+[a-z]", s[m.end(gi) :]):
                    continue  # "Solution: I counted the trees": a word, not a letter
                if h.isupper():
                    hits.append(_letter_or_text(h, s[m.end() :], valid, choices))
        else:
            hits = [a or b for a, b in _LETTER_PHRASE.findall(s)]
            hits = [h.upper() for h in hits if h.upper() in valid]
        if hits:
            return hits[-1]
    return None


_QUESTION = re.compile(r"\n\s*(?:Question|Q)\s*:", re.IGNORECASE)


MADE_UP = rule("made_up_question", "a model that makes up a new question and solves it is read at that "
                "question's answer, as it states it (a number, a letter), not by the options of the one it was asked")


def answer_part(row: dict[str, Any], response: str) -> tuple[str, bool]:
    """(the part of a response GPT-4 reads the answer from, whether it answers a question the model made up).

    A model that repeats the question it was asked answers it in the first block that answers; one that
    makes up a new question and solves it is read at its last conclusion (as GPT-4 did on the dev set); one
    that ends on a single question of its own and leaves it unanswered is read at that question (UNANSWERED).
    """
    blocks = _QUESTION.split(response)
    if len(blocks) == 1:
        return response, False
    question = str(row.get("question", ""))
    asked = content_words(question)[:8]
    repeats = all(content_words(b)[: len(asked)] == asked for b in blocks[1:] if b.strip())
    if not repeats:
        last = blocks[-1]
        if _answers(last):
            return last, True
        if on(UNANSWERED) and len(blocks) == 2 and _own_question(last, question):
            return last, True
        return response, False
    for i, block in enumerate(blocks):
        if find_answer(block)[0] is not None or letter_stated(block, 26):
            return "\nQuestion:".join(blocks[: i + 1]), False
    return response, False


UNANSWERED = rule("unanswered_made_up", "a response that ends on one question of its own (no options, not a "
                  "rewording of the one asked) and leaves it unanswered is read at that question, not at the answer "
                  "before it: GPT-4 answers it or copies it")
_OPTION_LIST = re.compile(r"choices\s*:|^\s*\(?[A-E][).]\s", re.IGNORECASE | re.MULTILINE)


def _answers(block: str) -> bool:
    """Whether a block of a response answers (a conclusion, an explicit answer, a 'Solution:')."""
    return bool(CONCLUSION.search(block) or find_answer(block)[0] is not None or re.search(r"\bSolution\s*:", block))


def _own_question(block: str, asked: str) -> bool:
    """Whether a block is a question of the model's own: no option list, under 60% of the asked question's words."""
    return not _OPTION_LIST.search(block) and asked_share(block, asked) < 0.6


MADE_UP_VALUE = rule("made_up_value", "a made-up question's answer is the value its conclusion states, before the "
                      "letter it names after it")


def made_up_answer(part: str) -> str:
    """The answer to a question the model made up, as it states it: the value its conclusion states ('Therefore,
    the number of apples left is 12.' before 'The answer is B.'), an explicit answer, a letter, a number; an
    unanswered question is copied (UNANSWERED).

    >>> made_up_answer(" How many employees does Acme Inc have?")
    'How many employees does Acme Inc have?'
    """
    if on(UNANSWERED) and not _answers(part):
        return part.strip()
    if on(MADE_UP_VALUE):
        for s in reversed(sentences(part)):
            if THEREFORE.search(s) and not _NAMED_LETTER.search(s) and (v := stated_number(s, strict=True)):
                return v
    ans, _ = find_answer(part)
    if ans is not None:
        return ans
    letter = letter_stated(part, 8)  # a made-up question's options: A to H
    if letter:
        return letter
    value = free_form(part)
    return value if value is not None else NO_ANSWER
