"""Reading a model's response the way GPT-4 did for MathVista's answer extraction: the text analysis
behind job_runtime.eval.benchmarks.mathvista_official (which holds the order they run in and the authors'
normalisation).

Each behaviour learnt from the dev set's stored extractions (../shared/eval-gold) is a named rule in
`RULES`; adding a name to `OFF` switches it off, which is how bench/official_agreement.py measures what
each rule adds on every source model and chooses the rules leaving one model out. No rule looks at an
item id, a question's text as such, or the model that wrote the response.
"""

from __future__ import annotations

import re
from typing import Any

from job_runtime.eval.answers import LETTERS, find_answer
from job_runtime.eval.benchmarks.numbers import clean_latex, to_number

NO_ANSWER = "N/A"  # what GPT-4 most often extracts from a response without an answer
NO_ANSWERS = (NO_ANSWER, "Cannot be determined", "Cannot be answered")  # what `declined` gives for a refusal

RULES: dict[str, str] = {}  # name -> what the rule does
OFF: set[str] = set()  # names switched off (the agreement bench's ablations)


def rule(name: str, what: str) -> str:
    """Register a rule of the stand-in; returns its name."""
    RULES[name] = what
    return name


def on(name: str) -> bool:
    return name not in OFF


_CHATTER = re.compile(
    r"^(?:i hope|hope this|let me know|is there anything|do you have|please let|feel free|if you have|i'm happy"
    r"|i am happy|happy to help|thank|sure[,!.]|okay[,!.]|ok[,!.]|here is|here's)",
    re.IGNORECASE,
)
_CODE = re.compile(r"```.*?(?:```|$)", re.DOTALL)
_WORD_NUMBERS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_NUM = re.compile(
    r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])|(?<![\w])(?:"
    + "|".join(_WORD_NUMBERS) + r")(?![\w])",
    re.IGNORECASE,
)
_CONCLUSION = re.compile(r"\b(?:therefore|thus|hence|so|in total|in conclusion|the answer|answer)\b", re.IGNORECASE)
_THEREFORE = re.compile(r"^\W*(?:therefore|thus|hence|so|in total|in conclusion)\b", re.IGNORECASE)
_NEGATION = re.compile(
    r"\b(?:not|no|cannot|never|neither|nor|none|impossible|unable|insufficient|unclear|false|incorrect|untrue)\b|n't\b",
    re.IGNORECASE)
_STATED = re.compile(r"(?:\bis|\bare|=|\bequals|\bequal to|\bbe|\bof|:|^|\d\s+to)\s*(?:about|approximately|around|roughly|only"
                     r"|exactly|a total of)?\s*\$?\**\s*$",
                     re.IGNORECASE)


def sentences(text: str) -> list[str]:
    """The response's sentences and lines, without code blocks and closing chatter ("I hope this helps")."""
    text = _CODE.sub(" ", text)
    parts = re.split(r"(?<=[.!?])\s+|\n+", text)
    return [p.strip() for p in parts if p.strip() and not _CHATTER.match(p.strip())]


def _as_number(token: str) -> str:
    low = token.lower()
    if low in _WORD_NUMBERS:
        return str(_WORD_NUMBERS[low])
    return token.replace(",", "")


_PRONOUN_BEFORE = re.compile(r"(?:\b(?:the|this|that|which|each|any|every|no|a|an|first|second|third|last|other|all|both"
                             r"|these|those)|\w+th)\s+$",
                             re.IGNORECASE)


def _numbers(sentence: str) -> list[tuple[int, str]]:
    """(position, number) of each number, digits or a word ("two"; not "the third one", "which one")."""
    out = []
    for m in _NUM.finditer(sentence):
        if m.group(0)[0].isalpha() and _PRONOUN_BEFORE.search(sentence[: m.start()]):
            continue
        out.append((m.start(), _as_number(m.group(0))))
    return out


LAST_STATED = rule("last_stated", "of a sentence's numbers, the last one stated ('... is 12', '= 12', 'there are 3', a "
                    "range's end 'from 1 to 7') is its result ('AOB = 100 and BAC = 80, so ACB is 50' states 50)")


STATED_FIRST = rule("stated_first", "in a short answer a number stated as a result ('is 12.25') comes before a "
                     "number merely mentioned in an earlier sentence ('dividing by 2')")


def _stated_number(sentence: str, strict: bool = False) -> str | None:
    """The number a sentence states as its result: a bold one, the one after "is"/"=", else its last."""
    bold = [b for b in re.findall(r"\*\*(.+?)\*\*", sentence) if _numbers(b)]
    if bold:
        return _numbers(bold[-1])[0][1]
    nums = _numbers(sentence)
    if not nums:
        return None
    if on(LAST_STATED):
        stated = [value for pos, value in nums if _STATED.search(sentence[:pos])]
        return stated[-1] if stated else (None if strict else nums[-1][1])
    if "=" in sentence:  # "5 + 7 = 12": the result of the last equation
        after = _numbers(sentence[sentence.rindex("=") + 1 :])
        if after:
            return after[0][1]
    for pos, value in nums:
        if _STATED.search(sentence[:pos]):
            return value
    return nums[-1][1]


STATED_LIST = rule("stated_list", "an answer stating several numbers ('9, 3', '[9, 7]') is kept whole, as GPT-4 "
                    "keeps it (no integer); one opening with a number is that number")
_NUMBER_LIST = re.compile(r"[\[(]?\s*-?\d+(?:\.\d+)?(?:\s*,\s*-?\d+(?:\.\d+)?)+\s*[\])]?")
_FINAL_VALUE = re.compile(r"\bfinal (?:value|answer|result)\b", re.IGNORECASE)


def free_form(response: str) -> str | None:
    """The number a response gives: its explicit answer, a bold value, else the one its conclusion states."""
    ans, _ = find_answer(response)
    if ans is not None:
        v = to_number(ans)
        if v is not None:
            return _fmt(v)
        if on(STATED_LIST) and _NUMBER_LIST.fullmatch(ans.strip()):
            return ans.strip()
        nums = _numbers(clean_latex(ans))
        if nums and on(STATED_LIST) and nums[0][0] == 0:  # "1982 with an income of $931,441"
            return nums[0][1]
        return nums[-1][1] if nums else ans
    sents = sentences(response)
    if not sents:
        return None
    bold = [b for s in sents for b in re.findall(r"\*\*(.+?)\*\*", s) if _numbers(b)]
    if bold:
        return _numbers(bold[-1])[0][1]
    if len(sents) <= 2:  # a short answer: its first stated value
        if on(STATED_FIRST):
            for s in sents:
                v = _stated_number(s, strict=True)
                if v is not None:
                    return v
        for s in sents:
            v = _stated_number(s)
            if v is not None:
                return v
        return None
    for pattern in (_FINAL_VALUE, _THEREFORE, _CONCLUSION):
        for s in reversed(sents):
            if pattern.search(s) and _numbers(s):
                return _stated_number(s)
    for s in reversed(sents):
        v = _stated_number(s)
        if v is not None:
            return v
    return None


YEAR = rule("year", "a question asking which year is answered by the year the answer sentence names, not by "
             "the other numbers beside it ('2019 showed the largest difference, 7.84 years')")
ASKS_YEAR = re.compile(r"\b(?:which|what) year\b|\bin which\b.*\byear|\bwhen\b", re.IGNORECASE)
_YEAR = re.compile(r"(?<![\d.,$])(1[5-9]\d\d|20\d\d)(?![\d.,%])")


def is_year(value: str | None) -> bool:
    return value is not None and _YEAR.fullmatch(value) is not None


def stated_year(response: str) -> str | None:
    sents = sentences(response)
    conclusions = [s for s in reversed(sents) if _FINAL_VALUE.search(s) or _CONCLUSION.search(s)]
    for s in conclusions + sents[:1] + sents[::-1]:
        years = _YEAR.findall(s)
        if years:
            return years[0]
    return None


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


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
    low = [c.strip().lower() for c in choices]
    if sorted(low) != ["no", "yes"]:
        return None
    m = re.match(r"[\W_]*(yes|no)\b", response, re.IGNORECASE)
    return choices[low.index(m.group(1).lower())] if m else None


def yes_no(response: str, choices: list[str], question: str = "") -> str | None:
    """Yes or No from prose: a leading yes/no, else the stated comparison (COMPARISON), else negation."""
    low = [c.strip().lower() for c in choices]
    if sorted(low) != ["no", "yes"]:
        return None
    sents = sentences(response)
    if not sents:
        return None
    first = re.sub(r"^[\W_]+", "", sents[0]).lower()
    for word in ("yes", "no"):
        if re.match(word + r"\b", first):
            return choices[low.index(word)]
    last = sents[-1] if len(sents) > 1 and _CONCLUSION.search(sents[-1]) else sents[0]
    negated = bool(_NEGATION.search(last))
    asked = _comparison(question) if on(COMPARISON) else None
    stated = _comparison(last) if asked in ("more", "less") else None
    if stated is not None:
        agrees = stated == asked
        return choices[low.index("yes" if agrees != negated else "no")]
    return choices[low.index("no" if negated else "yes")]


_STOP = {"the", "a", "an", "of", "to", "and", "in", "on", "is", "are", "would", "will", "be", "it", "its", "that", "this"}


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP]


OPTION_WORDS = rule("option_words", "an option is named by the words that set it apart from the other options "
                     "(word endings aside; 'Solution A' keeps its capital), words the question already holds "
                     "counting half, or by its whole text ('5:30', '0.33%')")


def _stem(w: str) -> str:
    for suffix in ("ing", "ed", "es", "s", "e"):
        if len(w) > len(suffix) + 3 and w.endswith(suffix):
            return w[: -len(suffix)]
    return w


def _tokens(text: str) -> list[str]:
    """Words for naming options: lower case, stop words out, endings off; a lone capital ('sample A') kept."""
    out = []
    for w in re.findall(r"[A-Za-z0-9]+", text):
        if len(w) == 1 and w.isupper():
            out.append(w)
        elif (low := w.lower()) not in _STOP:
            out.append(_stem(low))
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
    words = _words(sentence)
    if not words:
        return None
    best, best_key = None, None
    for c in choices:
        cw = _words(str(c))
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
    order = sents if len(sents) <= 3 else [s for s in reversed(sents) if _CONCLUSION.search(s)] + sents[:1]
    for s in order:
        named = _option_in(s, choices, question)
        if named is not None:
            return named
    return None


REFUSAL = rule("refusal", "a response that says the question cannot be answered is 'N/A' (GPT-4 copies a "
                "'cannot be determined/answered' it reads), not an option; unless an option says so itself")
_DECLINES = re.compile(
    r"\b(?:(?:cannot|can ?not|can't|unable to|impossible to|not possible to|no way to)"
    r" (?:be )?(?:determine|answer|provide|tell|say|see|identify|find|calculate|compute|know|predict|help|process|give"
    r"|access|view|read|solve|select|choose|compare|count|conclude|confirm|verify|be sure|quantif|measure)"
    r"|(?:do not|don't) have enough"
    r"|not (?:enough|sufficient) (?:information|context|data|details)|insufficient"
    r"|(?:does not|doesn't|did not|do not) (?:provide|give|contain|include|show|have|specify|mention)"
    r" (?:enough |sufficient |any )?(?:information|data|details|context|values|numbers)"
    r"|without (?:more|additional|specific|further|the|any)\b[^.]*\b(?:information|context|data|details|image|figure|diagram)"
    r"|not (?:provided|given|specified|clear))", re.IGNORECASE)
_UNDECIDED_OPTION = re.compile(r"can'?t|cannot|not (?:possible|enough|determin)|insufficient|unknown|none of", re.IGNORECASE)


def declined(sents: list[str], choices: list[str]) -> str | None:
    """What GPT-4 extracts from a response that declines to answer, or None when it answers.

    The conclusion (last two sentences, or a short response's first) says it cannot tell; an option that is
    itself "can't tell" makes that an answer, not a refusal.

    >>> declined(["The text does not give the sizes.", "Thus, the answer cannot be determined."], ["Yes", "No"])
    'Cannot be determined'
    >>> declined(["Without the figure, it is impossible to tell."], ["3", "4"]), declined(["It is 4."], ["3", "4"])
    ('N/A', None)
    """
    if not sents:
        return None
    first = re.sub(r"^[\W_]+", "", sents[0]).lower()
    if re.match(r"(?:yes|no)\b", first):
        return None
    tail = sents[-2:]
    if not (any(_DECLINES.search(s) for s in tail) or (len(sents) <= 3 and _DECLINES.search(sents[0]))):
        return None
    undecided = [c for c in choices if _UNDECIDED_OPTION.search(c)]
    if undecided:  # "it is not possible to predict" names the option "can't predict"
        return undecided[0]
    m = re.search(r"cannot be (determined|answered)", " ".join(sents), re.IGNORECASE)
    return f"Cannot be {m.group(1).lower()}" if m else NO_ANSWER


NONE_FITS = rule("none_fits", "a response concluding that none of the options fits its result is 'N/A'")
_NONE_FITS = re.compile(
    r"none of the (?:options|choices|answer choices|given options)|not (?:an|one of the|among the|in the) (?:options?|choices?"
    r"|answer choices)|not available in the (?:choices|options)|no correct (?:option|answer)"
    r"|mistake in the (?:question|problem|options|choices)", re.IGNORECASE)
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
    for s in [x for x in reversed(sents) if _CONCLUSION.search(x)][:1] + sents[-1:]:
        if value not in [n for _, n in _numbers(s)]:
            continue
        hits = [n for _, n in _numbers(s) if (nv := to_number(n)) is not None
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
    if m and not (on(ANSWER_COLON) and re.match(r"\s*A\s*(?::|\s-\s)", text)):
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
    makes up a new question and solves it is read at its last conclusion (as GPT-4 did on the dev set).
    """
    blocks = _QUESTION.split(response)
    if len(blocks) == 1:
        return response, False
    asked = _words(str(row.get("question", "")))[:8]
    repeats = all(_words(b)[: len(asked)] == asked for b in blocks[1:] if b.strip())
    if not repeats:
        last = blocks[-1]
        if _CONCLUSION.search(last) or find_answer(last)[0] is not None or re.search(r"\bSolution\s*:", last):
            return last, True
        return response, False
    for i, block in enumerate(blocks):
        if find_answer(block)[0] is not None or letter_stated(block, 26):
            return "\nQuestion:".join(blocks[: i + 1]), False
    return response, False


MADE_UP_VALUE = rule("made_up_value", "a made-up question's answer is the value its conclusion states, before the "
                      "letter it names after it")


def made_up_answer(part: str) -> str:
    """The answer to a question the model made up, as it states it: the value its conclusion states ('Therefore,
    the number of apples left is 12.' before 'The answer is B.'), an explicit answer, a letter, a number."""
    if on(MADE_UP_VALUE):
        for s in reversed(sentences(part)):
            if _THEREFORE.search(s) and not _NAMED_LETTER.search(s) and (v := _stated_number(s, strict=True)):
                return v
    ans, _ = find_answer(part)
    if ans is not None:
        return ans
    letter = letter_stated(part, 8)  # a made-up question's options: A to H
    if letter:
        return letter
    value = free_form(part)
    return value if value is not None else NO_ANSWER


def none_fits(response: str) -> bool:
    """Whether the conclusion says none of the options fits (NONE_FITS)."""
    return any(_NONE_FITS.search(s) for s in sentences(response)[-2:])


def number_answer(response: str, question: str) -> str:
    """The extraction for an integer or float question: N/A for a refusal, else the stated number (a year for a
    question asking which year)."""
    if on(REFUSAL) and find_answer(response)[0] is None and declined(sentences(response), []) is not None:
        return NO_ANSWER
    value = free_form(response)
    if on(YEAR) and ASKS_YEAR.search(question) and not is_year(value):
        value = stated_year(response) or value
    return value if value is not None else NO_ANSWER


def list_answer(response: str) -> str:
    """The extraction for a list question: the explicit answer, else the numbers of the last sentence."""
    ans, _ = find_answer(response)
    if ans is not None:
        return ans
    nums = [v for s in sentences(response)[-1:] for _, v in _numbers(s)]
    return "[" + ", ".join(nums) + "]" if nums else NO_ANSWER
