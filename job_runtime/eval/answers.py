"""Judge-free answer extraction and equivalence, shared by the eval stage and the RL reward.

Extraction order (`extract_answer`), first hit wins:

1. Region: the text after the last ``</think>`` is searched first; the whole response only when
   that final part holds no answer (a boxed answer inside the reasoning is a last resort).
2. In a region: the last ``\\boxed{...}`` (or ``\\fbox{}``) unless a later line states a "final
   answer" without a box (a box inside reasoning that the model then revised), else the last ``<answer>...</answer>``,
   else the last answer phrase: "final answer: X", "the (correct) answer/option is X",
   "answer should be X", a line starting "Answer: X" / "**Answer:** X", "答案是 X". A phrase
   captures the rest of its line up to the end of the sentence (or the next line when it ends
   the line, as in "**Final Answer**\\n\\n12").
3. Only with ``lenient=True`` (benchmark scoring, never the RL reward): a short last line
   ("B", "**12 cm**"), a single bold span in the last line, or the number ending the last
   sentence ("so the total is 24 cm.").

The extracted string is cleaned (`clean_answer`: markdown, quotes, trailing punctuation, a
``\\text{}`` wrapper) and compared by `is_correct`: choice letters both ways ("(B)", "B.",
"Option B", the option text), normalised strings, numbers (LaTeX fractions, roots, pi, units,
degrees, percentages, thousands separators: job_runtime.eval.benchmarks.numbers), tuples/lists, and
last math-verify (cached; its signal-based timeout only in a main thread).

>>> extract_answer("<think>2+3</think> The answer is \\\\boxed{5}.")
'5'
>>> extract_answer("Reasoning...\\nAnswer: (B) 145°"), is_correct("(B) 145°", "145°", ["135°", "145°"])
('(B) 145°', True)
>>> is_correct("\\\\frac{1}{2}", "0.5"), is_correct("1,000 m", "1000"), is_correct("7", "8")
(True, True, False)
"""

from __future__ import annotations

import math
import re
import threading
from functools import lru_cache

from job_runtime.eval.benchmarks.numbers import clean_latex, is_percent, repair_escapes, to_number, unwrap

__all__ = [
    "last_boxed",
    "extract_answer",
    "find_answer",
    "clean_answer",
    "choice_letter",
    "extract_choice",
    "math_equal",
    "numbers_close",
    "as_sequence",
    "is_correct",
    "edit_distance",
    "nearest_choice",
    "LETTERS",
]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_BOX_CMDS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; also ``\\boxed 5``.

    >>> last_boxed(r"so \\boxed{\\frac{1}{2}} and \\boxed{3}"), last_boxed(r"\\boxed 7."), last_boxed("none")
    ('3', '7', None)
    """
    start, cmd = -1, ""
    for c in _BOX_CMDS:
        i = text.rfind(c)
        if i > start:
            start, cmd = i, c
    if start < 0:
        return None
    i = start + len(cmd)
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        m = re.match(r"[^\s$]+", text[i:])
        return m.group(0).rstrip(".,") if m else None
    depth = 0
    for j in range(i, len(text)):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_PHRASE = re.compile(
    r"(?:final\s+answer(?:\s+is|(?=\s*(?:\*\*)?\s*[:：])|(?=\s*(?:\*\*)?\s*$))"  # "final answer is", "Final Answer:"
    r"|(?:the\s+)?(?:correct|right|best)\s+(?:answer|option|choice)(?:\s+(?:is|would\s+be|should\s+be)|(?=\s*(?:\*\*)?\s*[:：]))"
    r"|(?:the\s+)?answer\s+(?:is|should\s+be|would\s+be|will\s+be)"
    r"|^[\s>*#_]*answer(?=\s*(?:\*\*)?\s*[:：])"  # a line starting "Answer:"
    r"|the\s+answer(?=\s*[:：])"
    r"|答案(?:是|为)?)"
    r"(?:\s*\*\*)?\s*[:：]?(?:\s*\*\*)?[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)
_SENTENCE_END = re.compile(r"\.\s+(?=\S)|\.$|;\s|\s+(?:because|since|as|which|so)\b", re.IGNORECASE)
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ENDING_VALUE = re.compile(
    r"(?:\bis|\bare|=|\bequals|\bbe|:)\s*\$?\s*([-+]?\(?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?\)?\s*(?:%|°|[a-zA-Z]{1,12}(?:\^?[23²³])?)?)\s*\$?\s*\.?\s*$",
    re.IGNORECASE,
)


_KEYWORDS = ("answer", "option", "choice", "答案")


def _phrase_answer(region: str) -> str | None:
    lines = region.split("\n")
    for i in range(len(lines) - 1, -1, -1):  # the last line holding a phrase holds the last phrase
        low = lines[i].lower()
        found = [j for k in _KEYWORDS if (j := low.find(k)) >= 0]
        if not found:
            continue
        last = None
        for m in _PHRASE.finditer(lines[i], max(0, min(found) - 40)):
            last = m
        if last is None:
            continue
        line = lines[i][last.end() :]
        if not line.strip(" *:.$"):
            line = next((ln for ln in lines[i + 1 :] if ln.strip()), "")
        line = re.sub(r"\b(approx|approximately|about)\.?\s*", "", line.strip(), flags=re.IGNORECASE)
        cut = _SENTENCE_END.search(line)
        if cut and cut.start() > 0:
            line = line[: cut.start()]
        return line.strip() or None
    return None


_FINAL = re.compile(r"final\s+answer", re.IGNORECASE)


def _final_after_box(region: str) -> str | None:
    """An explicit "final answer" statement on a line after the last box, without a box of its own.

    >>> _final_after_box("So \\\\boxed{3}. Wait, I miscounted.\\nFinal answer: 4")
    '4'
    >>> _final_after_box("The final answer is \\\\boxed{5}.") is None
    True
    """
    box_line = region.count("\n", 0, max(region.rfind("\\boxed"), region.rfind("\\fbox")))
    tail = "\n".join(region.split("\n")[box_line + 1 :])
    if not _FINAL.search(tail):
        return None
    phrase = _phrase_answer(tail)
    return clean_answer(phrase) if phrase and "\\boxed" not in phrase and clean_answer(phrase) else None


def _lenient_answer(region: str) -> str | None:
    lines = [ln.strip() for ln in region.strip().split("\n") if ln.strip()]
    if not lines:
        return None
    last = lines[-1]
    bold = _BOLD.findall(last)
    if len(bold) == 1 and len(bold[0]) <= 40:
        return bold[0]
    m = _ENDING_VALUE.search(last)
    if m:
        return m.group(1)
    bare = clean_answer(last)
    return bare if len(bare) <= 40 else None


def find_answer(text: str | None, *, lenient: bool = False) -> tuple[str | None, str]:
    """(answer, method) where method is boxed, tag, phrase, lenient or none (see the module doc).

    >>> find_answer("<think>..\\\\boxed{1}..</think><answer>2</answer>"), find_answer("So it is 24 cm.", lenient=True)
    (('2', 'tag'), ('24 cm', 'lenient'))
    """
    if not text:
        return None, "none"
    regions = [text]
    k = text.rfind("</think>")
    if k >= 0:
        tail = text[k + len("</think>") :]
        regions = [tail, text] if tail.strip() else [text]
    for region in regions:
        boxed = last_boxed(region)
        if boxed is not None and boxed.strip():
            # A model that boxed a value mid-reasoning and then states its final answer: the last word counts.
            later = _final_after_box(region)
            if later:
                return later, "phrase"
            return clean_answer(boxed), "boxed"
        tags = _ANSWER_TAG.findall(region)
        if tags and tags[-1].strip():
            inner = tags[-1].strip()
            return clean_answer(last_boxed(inner) or inner), "tag"
        phrase = _phrase_answer(region)
        if phrase and clean_answer(phrase):
            return clean_answer(phrase), "phrase"
    if lenient:
        ans = _lenient_answer(regions[0])
        if ans and clean_answer(ans):
            return clean_answer(ans), "lenient"
    return None, "none"


def extract_answer(text: str | None, *, lenient: bool = False) -> str | None:
    """The final answer of a response, or None (order in the module doc).

    >>> extract_answer("x\\n**Final Answer:** 12 cm."), extract_answer("The correct option is (C)."), extract_answer("no")
    ('12 cm', '(C)', None)
    """
    return find_answer(text, lenient=lenient)[0]


_MD = re.compile(r"^[\s*_`#>]+|[\s*_`]+$")
_QUOTES = "\"'“”‘’`"


def clean_answer(s: str | None) -> str:
    """An extracted answer without markdown, quotes, a \\text{} wrapper or trailing punctuation.

    >>> clean_answer('**"Yes".**'), clean_answer("$\\\\text{(B)}$"), clean_answer(": 12.")
    ('Yes', '(B)', '12')
    """
    if s is None:
        return ""
    s = repair_escapes(str(s)).strip()
    for _ in range(3):
        old = s
        s = _MD.sub("", s).strip()
        s = s.strip(_QUOTES).strip()
        s = s.lstrip(":：").strip()
        s = s.rstrip(".,;!。").strip()
        if len(s) >= 2 and s[0] == "$" and s[-1] == "$" and s.count("$") in (2, 4):
            s = s.strip("$").strip()
        m = re.fullmatch(r"\\(?:text|textbf|mathrm|mathbf)\{(.*)\}", s)
        if m:
            s = m.group(1).strip()
        s = unwrap(s, ("\\boxed",)) if s.startswith("\\boxed") else s
        if s == old:
            break
    return s


def _norm(s: str) -> str:
    s = clean_latex(clean_answer(s)).lower()
    s = s.replace("\\%", "%").replace(" ", "").replace("\n", "")
    return s.rstrip(".")


# --- choices ---------------------------------------------------------------------------------

_PURE_LETTER = re.compile(r"^(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Z])[.:)]?|([a-z])[.)]?)$")
_LETTER_FORMS = (
    re.compile(r"^\(?([A-Z])\)?$"),
    re.compile(r"^\[([A-Z])\]$"),
    re.compile(r"^\(?([A-Z])\)?\s*[.:：)\]]\s*(.*)$", re.DOTALL),
    re.compile(r"^\(([A-Z])\)\s*(.*)$", re.DOTALL),
    re.compile(r"^(?:option|choice)\s*[:：]?\s*\(?([A-Za-z])\)?(?:\s*[.:)]\s*|\s+|$)(.*)$", re.IGNORECASE | re.DOTALL),
    re.compile(r"^\(?([a-z])\)?[.)]?$"),
)


def choice_letter(s: str | None, choices: list[str] | None = None, n: int | None = None) -> str | None:
    """The option letter an answer names ("B", "(B)", "B. text", "Option B", the option text).

    >>> choice_letter("(B) 145°", ["135°", "145°"]), choice_letter("145°", ["135°", "145°"]), choice_letter("b.", n=4)
    ('B', 'B', 'B')
    >>> choice_letter("Z", n=4) is None, choice_letter("A triangle", ["A triangle", "A square"])
    (True, 'A')
    """
    if s is None:
        return None
    n = len(choices) if choices else (n or 26)
    s = clean_answer(clean_latex(s) if "\\" in s or "$" in s else s)
    if not s:
        return None
    valid = LETTERS[:n]
    m = _PURE_LETTER.match(s)
    if m:  # a bare letter names a position, even when option texts are letters too
        letter = next(g for g in m.groups() if g).upper()
        return letter if letter in valid else None
    if choices:  # the option text itself (before "letter + text" forms: "A triangle" may be an option)
        ns = _norm(s)
        for i, c in enumerate(choices):
            if _norm(str(c)) == ns:
                return LETTERS[i]
    for pat in _LETTER_FORMS:
        m = pat.match(s)
        if m and m.group(1).upper() in valid:
            return m.group(1).upper()
    if choices:
        m = re.findall(r"\(([A-Z])\)", s)
        if len(set(m)) == 1 and m[0] in valid:
            return m[0]
        v = to_number(s)
        if v is not None:
            hits = [i for i, c in enumerate(choices) if (cv := to_number(str(c))) is not None and numbers_close(v, cv)]
            if len(hits) == 1:
                return LETTERS[hits[0]]
        # one option's text named inside a short answer ("The angle is 145°")
        low = s.lower()
        named = {i for i, c in enumerate(choices) if str(c).strip()
                 and re.search(r"(?<![\w.])" + re.escape(str(c).strip().lower()) + r"(?![\w])", low)}
        if len(named) == 1:
            return LETTERS[named.pop()]
    return None


_CHOSEN = re.compile(r"(?:\bis|\bchoose|\bselect|\bpick|\boption|\bchoice|'s|\bgo with)\s*:?\s*\(?([A-H])\)?[.!]?\s*$")


def extract_choice(text: str | None, choices: list[str] | None = None, n: int | None = None) -> tuple[str | None, str | None]:
    """(letter, extracted answer) of a multiple-choice response.

    >>> extract_choice("I think... so the answer is B.", n=4), extract_choice("C", n=4)
    (('B', 'B'), ('C', 'C'))
    """
    ans, _ = find_answer(text)
    if ans is not None:
        letter = choice_letter(ans, choices, n)
        if letter is not None:
            return letter, ans
    if not text or not text.strip():
        return None, ans
    lenient, _ = find_answer(text, lenient=True)
    if lenient is not None and lenient != ans:
        letter = choice_letter(lenient, choices, n)
        if letter is not None:
            return letter, lenient
    last = [ln for ln in text.strip().split("\n") if ln.strip()][-1]
    valid = LETTERS[: len(choices) if choices else (n or 26)]
    m = _CHOSEN.search(last)
    if m and m.group(1) in valid:
        return m.group(1), m.group(1)
    letters = {a or b for a, b in re.findall(r"\(([A-Z])\)|\*\*([A-Z])\*\*", last)}
    finished = re.search(r"[.!?)*\]]\s*$", last) is not None  # a response cut off mid-sentence has no answer
    if len(letters) == 1 and finished and (letter := letters.pop()) in valid:
        return letter, letter
    return None, ans if ans is not None else lenient


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance.

    >>> edit_distance("kitten", "sitting")
    3
    """
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def nearest_choice(s: str, choices: list[str]) -> str:
    """The choice closest to s by edit distance, the first on ties (MathVista's rule).

    >>> nearest_choice("quarter pas", ["half", "quarter past"])
    'quarter past'
    """
    dists = [edit_distance(s, str(c)) for c in choices]
    return choices[dists.index(min(dists))]


# --- equivalence -----------------------------------------------------------------------------


def numbers_close(a: float, b: float, rel: float = 1e-6) -> bool:
    """Equal up to a relative tolerance (absolute near zero).

    >>> numbers_close(0.1 + 0.2, 0.3), numbers_close(1.0, 1.01), numbers_close(2309415687, 2309415689)
    (True, False, False)
    """
    if float(a).is_integer() and float(b).is_integer():
        return a == b  # integers are exact: a relative tolerance would equate large neighbours
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


_SEQ_SPLIT = re.compile(r"\s*(?:,|;|\band\b)\s*")


def as_sequence(s: str) -> list[float] | None:
    """The numbers of a tuple or list answer ("(1, 2)", "[3; 4]", "5 and 6"), or None.

    >>> as_sequence("[1, 2.5]"), as_sequence("7")
    ([1.0, 2.5], None)
    """
    t = clean_latex(s).strip()
    if len(t) >= 2 and t[0] in "([{" and t[-1] in ")]}":
        t = t[1:-1]
    if not re.search(r",|;|\band\b", t):
        return None
    parts = [p for p in _SEQ_SPLIT.split(t) if p]
    vals = [to_number(p) for p in parts]
    return None if len(vals) < 2 or any(v is None for v in vals) else vals  # type: ignore[return-value]


_MATHY = re.compile(r"[\d\\^_{}()+\-*/=<>]")
_ARITHMETIC = re.compile(r"[\d\s+\-*/^().{}\[\]]+")
_PLAIN_NUMBER = re.compile(r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*$")
_STRUCTURE = re.compile(r"[,;\[\]]|[a-zA-Z]\s*=|=\s*[a-zA-Z]|[<>≤≥]|\\[lg]eq?\b|\\cup|\\infty")
MAX_VERIFY_CHARS = 160  # longer strings are sentences, not expressions: math-verify would only be slow


def _incomparable(number: str, other: str) -> bool:
    """A closed number can never equal words, tuples, intervals, equations, ratios or free variables.

    >>> _incomparable("\\\\frac{7}{9}", "\\\\pi-\\\\tan^{-1}(1/d)"), _incomparable("x+1", "2"), _incomparable("3", "3^{1008}")
    (True, False, False)
    """
    if to_number(number) is None:
        return False
    o = clean_latex(other)
    if _STRUCTURE.search(o) or ":" in o:
        return True
    bare = re.sub(r"\\[a-zA-Z]+|\bpi\b|\bsqrt\b|\bfrac\b", "", o)
    return bool(re.search(r"[a-zA-Z]", bare))


@lru_cache(maxsize=65536)
def _math_verify(pred: str, gold: str) -> bool:
    try:
        from math_verify import parse, verify
    except ImportError:  # the base install (controller side) has no math-verify
        return False
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:

        def _parse(s: str):
            out = parse(s if "$" in s or "\\boxed" in s else f"${s}$", parsing_timeout=timeout)
            return out or parse(s, parsing_timeout=timeout)

        g, p = _parse(gold), _parse(pred)
        return bool(g and p and verify(g, p, timeout_seconds=timeout))
    except Exception:
        return False


@lru_cache(maxsize=65536)
def math_equal(pred: str, gold: str, rel: float = 1e-6) -> bool:
    """Whether two answer strings denote the same value (see the module doc).

    >>> math_equal("50%", "0.5"), math_equal("(1, 2)", "[1,2]"), math_equal("x^2+2x+1", "(x+1)^2")
    (True, True, True)
    """
    if _norm(pred) == _norm(gold):
        return True
    a, b = to_number(pred), to_number(gold)
    if a is not None and b is not None:
        if numbers_close(a, b, rel):
            return True
        if is_percent(pred) and numbers_close(a / 100, b, rel):
            return True
        return is_percent(gold) and numbers_close(a, b / 100, rel)
    sa, sb = as_sequence(pred), as_sequence(gold)
    if sa is not None and sb is not None:
        return len(sa) == len(sb) and all(numbers_close(x, y, rel) for x, y in zip(sa, sb))
    if (a is not None or b is not None) and not (_MATHY.search(pred) and _MATHY.search(gold)):
        return False  # a number against words
    if (a is None) != (b is None) and _ARITHMETIC.fullmatch(clean_latex(pred if a is None else gold)):
        return False  # plain arithmetic the evaluator rejected (overflow, division by zero) is no finite value
    if not (_MATHY.search(pred) or _MATHY.search(gold)):
        return False  # two different words: math-verify cannot help
    if _incomparable(pred, gold) or _incomparable(gold, pred) or max(len(pred), len(gold)) > MAX_VERIFY_CHARS:
        return False
    return _math_verify(pred, gold)


def is_correct(pred: str | None, gold: str, choices: list[str] | None = None) -> bool:
    """Whether an extracted answer matches the gold one (letters or option text when choices are given).

    >>> is_correct("B", "145°", ["135°", "145°"]), is_correct("145°", "B", ["135°", "145°"]), is_correct(None, "1")
    (True, True, False)
    """
    if pred is None or gold is None:
        return False
    p, g = clean_answer(pred), clean_answer(str(gold))
    if not p or not g:
        return False
    if choices:
        pl, gl = choice_letter(p, choices), choice_letter(g, choices)
        if pl is not None and gl is not None:
            return pl == gl
        if gl is not None and pl is None:
            return math_equal(p, str(choices[LETTERS.index(gl)]))
    return math_equal(p, g)
