"""Numbers out of answer strings: plain, LaTeX, units, percentages, thousands separators.

`to_number` turns what models and answer keys write ("1,000", "$\\frac{3}{4}$", "5\\sqrt{3} cm",
"45^\\circ", "25%", "x = 0.5", "2(\\sqrt{2}-1)") into a float, or None when the string is not a
closed numeric expression (it has variables, several values, words that are not units). It is a
small tokenizer and recursive-descent evaluator over + - * / ^, parentheses, implicit
multiplication, \\frac, \\sqrt, \\pi: fast (tens of microseconds) and safe (no eval), so scorers
can decide most numeric answers without calling math-verify.

>>> to_number("1,000"), to_number("\\\\frac{3}{4}"), to_number("45^\\\\circ"), to_number("x = 0.5")
(1000.0, 0.75, 45.0, 0.5)
>>> round(to_number("2(\\\\sqrt{2}-1)"), 4), to_number("6 cm"), to_number("x + 1") is None
(0.8284, 6.0, True)
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

__all__ = ["repair_escapes", "clean_latex", "strip_units", "to_number", "evaluate", "is_percent", "numbers_in"]

_TEXT_CMDS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mathit|mbox|operatorname|rm|bf)\s*\{([^{}]*)\}")
_SPACES = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~|\\displaystyle|\\left|\\right|\\big|\\Big")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree|掳|\{?degrees?\}?(?![a-z])", re.IGNORECASE)
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3})((?:,\d{3})+)(?![\d])")
_LATEX_THOUSANDS = re.compile(r"(?<=\d)\{,\}(?=\d{3})")  # lookarounds: "1{,}000{,}000" has two


def clean_latex(s: str) -> str:
    """A LaTeX-ish answer without math delimiters, spacing, text wrappers, degrees and separators.

    >>> clean_latex("$\\\\text{5}\\\\,\\\\mathrm{cm}$"), clean_latex("1,234,567"), clean_latex("\\\\dfrac{1}{2}")
    ('5cm', '1234567', '\\\\frac{1}{2}')
    """
    s = repair_escapes(s).replace("\\\\", "\\")  # doubled backslashes
    s = s.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    s = s.replace("\\[", "").replace("\\]", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = unwrap(s, ("\\boxed", "\\fbox"))
    for _ in range(3):
        new = _TEXT_CMDS.sub(r"\1", s)
        if new == s:
            break
        s = new
    s = _SPACES.sub("", s)
    s = _DEGREES.sub("", s)
    s = _LATEX_THOUSANDS.sub("", s)
    s = _THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), s)
    return s.strip()


_LOST_ESCAPES = (
    ("\x0c", "\\f"),  # "\frac" written unescaped in JSON: "\f" is a form feed
    ("\x08", "\\b"),  # "\boxed", "\beta": "\b" is a backspace
    ("\x07", "\\a"),
    ("\x0b", "\\v"),
)
_TAB_COMMAND = re.compile(r"\t(?=ext|imes|heta|an\b|frac|riangle|o\b)")
_CR_COMMAND = re.compile(r"\r(?=ight|ho\b|m\b|ightarrow)")


def repair_escapes(s: str) -> str:
    """LaTeX commands whose backslash a JSON writer turned into a control character.

    >>> repair_escapes("\\x0crac{1}{2}"), repair_escapes("5\\x09imes 2"), repair_escapes("\\x08oxed{3}")
    ('\\\\frac{1}{2}', '5\\\\times 2', '\\\\boxed{3}')
    """
    if not any(c in s for c in "\x0c\x08\x07\x0b\t\r"):
        return s
    for bad, good in _LOST_ESCAPES:
        s = s.replace(bad, good)
    s = _TAB_COMMAND.sub(lambda m: "\\t", s)
    return _CR_COMMAND.sub(lambda m: "\\r", s)


def unwrap(s: str, commands: tuple[str, ...]) -> str:
    """Replace each ``\\cmd{X}`` (braces balanced) by X.

    >>> unwrap("\\\\boxed{\\\\frac{1}{2}} cm", ("\\\\boxed",))
    '\\\\frac{1}{2} cm'
    """
    for cmd in commands:
        while (i := s.find(cmd + "{")) >= 0:
            j, depth = i + len(cmd) + 1, 1
            while j < len(s) and depth:
                depth += {"{": 1, "}": -1}.get(s[j], 0)
                j += 1
            if depth:
                break
            s = s[:i] + s[i + len(cmd) + 1 : j - 1] + s[j:]
    return s


def is_percent(s: str) -> bool:
    """Whether an answer is written as a percentage."""
    return "%" in s or "percent" in s.lower()


# Units and filler words that may trail (or lead) a number.
_UNIT_TAIL = re.compile(
    r"(?:\s*(?:\^\s*\{?[23]\}?|[²³])|\s*\\?%|\s*percent|\s*(?<![\\a-zA-Z])(?!pi\b)[a-zA-Z][a-zA-Z.]*\.?(?:\s*\^\s*\{?[23]\}?|[²³])?"
    r"|\s*/\s*[a-zA-Z]+(?:\^\{?[23]\}?)?|\s*\{[a-zA-Z ]+\})\s*$"
)
_UNIT_HEAD = re.compile(r"^\s*(?:about|approximately|approx\.?|around|roughly|rs\.?|usd|us|eur|£|€|¥|\\approx)\s*", re.I)


_ONE_LETTER_UNITS = "mgshlLKNJWVTC"


def strip_units(s: str) -> str:
    """Drop trailing unit words ('cm', 'years', 'm^2', '%') and leading filler ('about').

    >>> strip_units("12 square units"), strip_units("3.5 m^2"), strip_units("about 7")
    ('12', '3.5', '7')
    """
    s = _UNIT_HEAD.sub("", s).strip()
    for _ in range(4):
        m = _UNIT_TAIL.search(s)
        if not m or m.start() == 0:
            break
        head = s[: m.start()].rstrip()
        if not re.search(r"[\d)}]|\\pi|π", head):
            break
        word = re.sub(r"[^a-zA-Z]", "", m.group(0))
        if len(word) == 1 and word not in _ONE_LETTER_UNITS:
            break  # "2\pi r": a variable, not a unit
        s = head
    return s


# --- a tiny safe evaluator ----------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+)|(\\frac|\\sqrt|\\pi|π|pi|sqrt|\\cdot|\\times|\\div|÷|×|·)|([-+*/^(){}\[\]]))")


class _Bad(Exception):
    pass


def _tokens(s: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    s = s.strip()
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m or m.end() == pos:
            raise _Bad(s[pos:])
        pos = m.end()
        num, word, op = m.groups()
        if num is not None:
            out.append(("num", num))
        elif word is not None:
            w = word.lstrip("\\")
            if w in ("pi", "π"):
                out.append(("num", "pi"))
            elif w in ("cdot", "times", "×", "·"):
                out.append(("op", "*"))
            elif w in ("div", "÷"):
                out.append(("op", "/"))
            else:
                out.append(("fn", w))
        else:
            kind = "op" if op in "-+*/^" else ("open" if op in "({[" else "close")
            out.append((kind, op))
    return out


class _Parser:
    """expr := term (('+'|'-') term)*; term := unary (('*'|'/'|implicit) unary)*;
    unary := ('-'|'+') unary | power; power := atom ('^' unary)?"""

    def __init__(self, toks: list[tuple[str, str]]):
        self.t, self.i = toks, 0

    def peek(self) -> tuple[str, str] | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise _Bad("end")
        self.i += 1
        return tok

    def expr(self) -> float:
        v = self.term()
        while (tok := self.peek()) and tok[0] == "op" and tok[1] in "+-":
            self.i += 1
            v = v + self.term() if tok[1] == "+" else v - self.term()
        return v

    def term(self) -> float:
        v = self.unary()
        while (tok := self.peek()) is not None:
            if tok[0] == "op" and tok[1] in "*/":
                self.i += 1
                r = self.unary()
                v = v * r if tok[1] == "*" else v / r
            elif tok[0] in ("num", "fn", "open"):  # implicit multiplication: 2\pi, 3(x), 5\sqrt{3}
                v = v * self.power()
            else:
                break
        return v

    def unary(self) -> float:
        tok = self.peek()
        if tok and tok[0] == "op" and tok[1] in "+-":
            self.i += 1
            v = self.unary()
            return -v if tok[1] == "-" else v
        return self.power()

    def power(self) -> float:
        base = self.atom()
        tok = self.peek()
        if tok and tok == ("op", "^"):
            self.i += 1
            exp = self.unary()
            if abs(exp) > 1000 or (abs(base) > 1e6 and exp > 50):
                raise _Bad("huge")
            return float(base) ** exp
        return base

    def group(self) -> float:
        kind, val = self.take()
        if kind != "open":
            # \frac12, \sqrt2: a single digit (or \pi) stands for the argument
            if kind == "num":
                return math.pi if val == "pi" else float(val)
            raise _Bad(val)
        v = self.expr()
        if self.take()[0] != "close":
            raise _Bad("close")
        return v

    def atom(self) -> float:
        kind, val = self.take()
        if kind == "num":
            if val == "pi":
                return math.pi
            return float(val)
        if kind == "open":
            v = self.expr()
            if self.take()[0] != "close":
                raise _Bad("close")
            return v
        if kind == "fn" and val == "frac":
            if self.peek() and self.peek()[0] == "num" and self.peek()[1] != "pi" and len(self.peek()[1]) == 2:
                digits = self.take()[1]  # \frac12
                return float(digits[0]) / float(digits[1])
            num = self.group()
            den = self.group()
            return num / den
        if kind == "fn" and val == "sqrt":
            if self.peek() == ("open", "["):
                self.i += 1
                n = self.expr()
                if self.take()[0] != "close":
                    raise _Bad("close")
                x = self.group()
                return x ** (1.0 / n)
            x = self.group()
            if x < 0:
                raise _Bad("sqrt<0")
            return math.sqrt(x)
        raise _Bad(val)


@lru_cache(maxsize=65536)
def evaluate(expr: str) -> float | None:
    """The value of a closed arithmetic expression (LaTeX or plain), or None.

    >>> evaluate("\\\\frac{\\\\sqrt{6}}{6}") == 6 ** 0.5 / 6, evaluate("2^{10}"), evaluate("a+1")
    (True, 1024.0, None)
    """
    if not expr or len(expr) > 200:
        return None
    try:
        p = _Parser(_tokens(expr))
        v = p.expr()
        if p.i != len(p.t):
            return None
        v = float(v)
        return v if math.isfinite(v) else None
    except (_Bad, ZeroDivisionError, OverflowError, ValueError, RecursionError, TypeError):
        return None


_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split()
)}
_LEADING_NUMBER = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?=\s|$)")


@lru_cache(maxsize=65536)
def to_number(s: str | None) -> float | None:
    """The numeric value of an answer string, or None (see the module doc).

    >>> to_number("$4.00"), to_number("25\\\\%"), to_number("-\\\\frac{24}{25}"), to_number("2, 3")
    (4.0, 25.0, -0.96, None)
    """
    if s is None:
        return None
    s = clean_latex(str(s))
    if not s:
        return None
    word = _WORDS.get(s.lower().strip(" .!"))
    if word is not None:
        return float(word)
    # keep the right side of an assignment or approximation: "x = 5", "Area = 12 cm^2", "\approx 3.14"
    for sep in ("\\approx", "≈", "="):
        if sep in s:
            parts = [p for p in s.split(sep)]
            s = parts[-1].strip() or s
    s = s.strip().rstrip(".").strip()
    v = evaluate(s)
    if v is not None:
        return v
    t = strip_units(s).replace("%", "").replace("\\", "").strip() if "%" in s else strip_units(s)
    if t != s:
        v = evaluate(t)
        if v is not None:
            return v
    m = _LEADING_NUMBER.match(s)
    if m and re.fullmatch(r"[\s\w.,'’()-]*", s[m.end():] or "") and not re.search(r"\d", s[m.end():]):
        return float(m.group(0))
    return None


_NUM_IN = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def numbers_in(s: str) -> list[float]:
    """Every plain number in a string, thousands separators removed.

    >>> numbers_in("between 1,200 and -3.5 (or 7)")
    [1200.0, -3.5, 7.0]
    """
    s = _THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), s)
    return [float(x) for x in _NUM_IN.findall(s)]
