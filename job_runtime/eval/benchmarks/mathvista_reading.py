"""Reading a model's response the way GPT-4 did for MathVista's answer extraction: the rule registry, and
the reading of sentences, stated numbers, lists, years and refusals (multiple-choice reading:
job_runtime.eval.benchmarks.mathvista_choices; the order the rules run in and the authors' normalisation:
job_runtime.eval.benchmarks.mathvista_official).

Each behaviour learnt from the dev set's stored extractions (../shared/eval-gold) is a named rule in
`RULES`; adding a name to `OFF` switches it off, which is how bench/official_agreement.py measures what
each rule adds on every source model and chooses the rules leaving one model out. No rule looks at an
item id, a question's text as such, or the model that wrote the response.
"""

from __future__ import annotations

import re

from job_runtime.eval.answers import find_answer
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
CONCLUSION = re.compile(r"\b(?:therefore|thus|hence|so|in total|in conclusion|the answer|answer)\b", re.IGNORECASE)
THEREFORE = re.compile(r"^\W*(?:therefore|thus|hence|so|in total|in conclusion)\b", re.IGNORECASE)
NEGATION = re.compile(
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


_ONE_AFTER_ADJECTIVE = re.compile(r"\b(?:the|a|an)\s+\w+(?:est|er)\s+$", re.IGNORECASE)


def numbers_in(sentence: str) -> list[tuple[int, str]]:
    """(position, number) of each number, digits or a word ("two"; not "the third one", "which one", "the
    smallest one": a pronoun).

    >>> numbers_in("Find all the values and identify the smallest one."), numbers_in("There are two, not 3.")
    ([], [(10, '2'), (19, '3')])
    """
    out = []
    for m in _NUM.finditer(sentence):
        word = m.group(0).lower()
        before = sentence[: m.start()]
        pronoun = _PRONOUN_BEFORE.search(before) or (word == "one" and _ONE_AFTER_ADJECTIVE.search(before))
        if word[0].isalpha() and pronoun:
            continue
        out.append((m.start(), _as_number(m.group(0))))
    return out


LAST_STATED = rule("last_stated", "of a sentence's numbers, the last one stated ('... is 12', '= 12', 'there are 3', a "
                    "range's end 'from 1 to 7') is its result ('AOB = 100 and BAC = 80, so ACB is 50' states 50)")


STATED_FIRST = rule("stated_first", "in a short answer a number stated as a result ('is 12.25') comes before a "
                     "number merely mentioned in an earlier sentence ('dividing by 2')")


def stated_number(sentence: str, strict: bool = False) -> str | None:
    """The number a sentence states as its result: a bold one, the one after "is"/"=", else its last."""
    bold = [b for b in re.findall(r"\*\*(.+?)\*\*", sentence) if numbers_in(b)]
    if bold:
        return numbers_in(bold[-1])[0][1]
    nums = numbers_in(sentence)
    if not nums:
        return None
    if on(LAST_STATED):
        stated = [value for pos, value in nums if _STATED.search(sentence[:pos])]
        return stated[-1] if stated else (None if strict else nums[-1][1])
    if "=" in sentence:  # "5 + 7 = 12": the result of the last equation
        after = numbers_in(sentence[sentence.rindex("=") + 1 :])
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


EXPRESSION = rule("expression", "an explicit answer that is an expression in a variable ('(n/2) + 1') is copied "
                  "whole, not read as its last number")
_VARIABLE = re.compile(r"(?<![A-Za-z])[a-z](?=\s*[-+*)])|(?<=[-+*^(])[a-z](?![A-Za-z])")


def free_form(response: str) -> str | None:
    """The number a response gives: its explicit answer, a bold value, else the one its conclusion states.

    >>> free_form("Therefore, the answer is (n/2) + 1."), free_form("The answer is 5 m/s.")
    ('(n/2) + 1', '5')
    """
    ans, _ = find_answer(response)
    if ans is not None:
        v = to_number(ans)
        if v is not None:
            return _fmt(v)
        if on(EXPRESSION) and _VARIABLE.search(ans):
            return ans.strip()
        if on(STATED_LIST) and _NUMBER_LIST.fullmatch(ans.strip()):
            return ans.strip()
        nums = numbers_in(clean_latex(ans))
        if nums and on(STATED_LIST) and nums[0][0] == 0:  # "1982 with an income of $931,441"
            return nums[0][1]
        return nums[-1][1] if nums else ans
    sents = sentences(response)
    if not sents:
        return None
    bold = [b for s in sents for b in re.findall(r"\*\*(.+?)\*\*", s) if numbers_in(b)]
    if bold:
        return numbers_in(bold[-1])[0][1]
    if len(sents) <= 2:  # a short answer: its first stated value
        if on(STATED_FIRST):
            for s in sents:
                v = stated_number(s, strict=True)
                if v is not None:
                    return v
        for s in sents:
            v = stated_number(s)
            if v is not None:
                return v
        return None
    for pattern in (_FINAL_VALUE, THEREFORE, CONCLUSION):
        for s in reversed(sents):
            if pattern.search(s) and numbers_in(s):
                return stated_number(s)
    for s in reversed(sents):
        v = stated_number(s)
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
    conclusions = [s for s in reversed(sents) if _FINAL_VALUE.search(s) or CONCLUSION.search(s)]
    for s in conclusions + sents[:1] + sents[::-1]:
        years = _YEAR.findall(s)
        if years:
            return years[0]
    return None


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


STOP_WORDS = {"the", "a", "an", "of", "to", "and", "in", "on", "is", "are", "would", "will", "be", "it", "its", "that", "this"}


def content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP_WORDS]


def asked_share(text: str, question: str) -> float:
    """The share of the question's content words that the text holds (0 for a question without any): here
    bars, below and 40 of how, many, bars, below, 40.

    >>> asked_share("There are 3 bars below 40.", "How many bars are below 40?")
    0.6
    """
    asked = set(content_words(question))
    return len(asked & set(content_words(text))) / len(asked) if asked else 0.0


def stem(w: str) -> str:
    for suffix in ("ing", "ed", "es", "s", "e"):
        if len(w) > len(suffix) + 3 and w.endswith(suffix):
            return w[: -len(suffix)]
    return w


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


LEFT_OPEN = rule("left_open", "a yes/no question the response leaves open, ending on 'it is impossible to determine "
                 "whether ...' (not 'the solution cannot be provided') or only restating the question, is read as "
                 "'B', as GPT-4 read it, not as 'N/A'")
_WHETHER = re.compile(r"\b(?:determine|tell|say|know|conclude|confirm)\s+(?:for certain\s+)?(?:whether|if|that)\b"
                      r"|\binformation (?:on|about) whether\b|\bdetermined for certain that\b", re.IGNORECASE)
LEFT_OPEN_READ = "B"


def yes_no_options(choices: list[str]) -> bool:
    """Whether the options are Yes and No (any case)."""
    return sorted(c.strip().lower() for c in choices) == ["no", "yes"]


def declined(sents: list[str], choices: list[str]) -> str | None:
    """What GPT-4 extracts from a response that declines to answer, or None when it answers.

    The conclusion (last two sentences, or a short response's first) says it cannot tell; an option that is
    itself "can't tell" makes that an answer, not a refusal; a yes/no question left open is "B" (LEFT_OPEN).

    >>> declined(["The text does not give the sizes.", "Thus, the answer cannot be determined."], ["Yes", "No"])
    'Cannot be determined'
    >>> declined(["Without the figure, it is impossible to tell."], ["3", "4"]), declined(["It is 4."], ["3", "4"])
    ('N/A', None)
    >>> declined(["The text does not say.", "So it is impossible to determine whether A is larger."], ["yes", "no"])
    'B'
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
    last = sents[-1]
    open_question = _WHETHER.search(last) and "cannot be provided" not in last.lower()
    if on(LEFT_OPEN) and yes_no_options(choices) and open_question:
        return LEFT_OPEN_READ
    m = re.search(r"cannot be (determined|answered)", " ".join(sents), re.IGNORECASE)
    return f"Cannot be {m.group(1).lower()}" if m else NO_ANSWER


NONE_FITS = rule("none_fits", "a response concluding that none of the options fits its result is 'N/A'")
_NONE_FITS = re.compile(
    r"none of the (?:options|choices|answer choices|given options)|not (?:an|one of the|among the|in the) (?:options?|choices?"
    r"|answer choices)|not available in the (?:choices|options)|no correct (?:option|answer)"
    r"|mistake in the (?:question|problem|options|choices)", re.IGNORECASE)
def none_fits(response: str) -> bool:
    """Whether the conclusion says none of the options fits (NONE_FITS)."""
    return any(_NONE_FITS.search(s) for s in sentences(response)[-2:])


COUNTED = rule("counted", "a 'how many X' question without an explicit answer is answered by the one number "
               "that counts X ('There are 3 bars below 40 ... values 58, 59 and 63', 'in 5 years')")
_HOW_MANY = re.compile(r"\bhow many (\w+)", re.IGNORECASE)


def counted(response: str, question: str) -> str | None:
    """The one number a response puts before the noun a 'how many' question counts, or None.

    >>> counted("Yes, in 5 years it is greater than 1.6%.", "In how many years is it greater than 1.6%?")
    '5'
    >>> counted("There are 3 bars, and 4 bars are blue.", "How many bars are red?") is None
    True
    """
    m = _HOW_MANY.search(question)
    if not m:
        return None
    noun = stem(m.group(1).lower())
    found = set()
    for s in sentences(response):
        for pos, value in numbers_in(s):
            after = re.match(r"[\w.,]*\s+(\w+)", s[pos:])
            if after and stem(after.group(1).lower()) == noun:
                found.add(value)
    return found.pop() if len(found) == 1 else None


ANSWER_SENTENCE = rule("answer_sentence", "with no explicit answer and no concluding sentence, an opening sentence "
                       "in the question's words (half of them) states the answer ('The maximum rating ... is **70**. "
                       "... ranging from **20** to **60**')")


def answer_sentence(response: str, question: str) -> str | None:
    """The number stated by an opening sentence that restates the question, when nothing concludes (see
    ANSWER_SENTENCE; for a response without an explicit answer), or None."""
    sents = sentences(response)
    if len(sents) <= 2:
        return None
    if any(p.search(s) and numbers_in(s) for p in (_FINAL_VALUE, THEREFORE, CONCLUSION) for s in sents):
        return None
    if asked_share(sents[0], question) < 0.5:
        return None
    return stated_number(sents[0], strict=True)


def number_answer(response: str, question: str) -> str:
    """The extraction for an integer or float question: N/A for a refusal, else the number that counts what a
    'how many' question asks, the number an opening answer sentence states, else the stated number (a year for a
    question asking which year)."""
    explicit = find_answer(response)[0] is not None
    if on(REFUSAL) and not explicit and declined(sentences(response), []) is not None:
        return NO_ANSWER
    value = None
    if on(COUNTED) and not explicit:
        value = counted(response, question)
    if value is None and on(ANSWER_SENTENCE) and not explicit:
        value = answer_sentence(response, question)
    value = value if value is not None else free_form(response)
    if on(YEAR) and ASKS_YEAR.search(question) and not is_year(value):
        value = stated_year(response) or value
    return value if value is not None else NO_ANSWER


def list_answer(response: str) -> str:
    """The extraction for a list question: the explicit answer, else the numbers of the last sentence."""
    ans, _ = find_answer(response)
    if ans is not None:
        return ans
    nums = [v for s in sentences(response)[-1:] for _, v in numbers_in(s)]
    return "[" + ", ".join(nums) + "]" if nums else NO_ANSWER
