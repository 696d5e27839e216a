"""The number MATH-V's official rules get from an answer string, without latex2sympy.

MATH-V's evaluation/utils.py (mathllm/MATH-V) compares answers by
``round(eval(str(latex2sympy(s))), 2)`` inside a bare ``try``: any failure -- a parse error, a
free symbol (NameError), a list (TypeError on round), a complex value -- makes the comparison
false. `latex_value(s)` returns that rounded number, or None where the official code fails. It is
our own tokenizer and recursive-descent evaluator over the subset of latex2sympy2 1.9.1's grammar
that answers use, written to match its behaviour rule by rule (each rule below was checked against
the real latex2sympy2 on probe strings; bench/score_agreement.py measures the whole):

- numbers: digits with ``,ddd`` thousands groups ("1,000" is 1000, "1,0000" is 1000*0), a decimal
  part only when a digit follows the dot ("8." is 8, then the parse stops); a lone "." ends it;
- operators: + - * / and ``:`` (a ratio is a division), ``\\cdot \\times \\div``, ``^`` (left
  associative; its exponent is one number, letter or braced group: ``2^-1`` fails), postfix ``!``
  and ``\\%`` (no space before it), implicit multiplication ("2\\pi", "3(4)", "3\\frac{1}{2}" = 1.5);
- groups ``( ) [ ] { } \\{ \\}``; ``\\frac{a}{b}``, ``\\sqrt{x}``, ``\\sqrt[n]{x}`` need braces;
  ``\\pi``; ``e^{x}`` is exp(x) (but exp(1) prints as E, which ``eval`` does not know);
  ``\\sin \\cos \\tan \\arcsin ...`` in radians, ``\\log`` base 10, ``\\log_b``; ``\\ln``, ``\\cot``,
  ``\\sec``, ``\\csc``, ``|x|``, ``\\infty``, ``\\lceil`` and every other letter fail at ``eval``;
- the parse stops at the first token that cannot continue the expression (an unmatched ``) ] }``, a
  lone dot, ``&``, ``\\\\``): what follows is ignored, but a character the lexer rejects right there
  (``%``, ``°``, ``?``, a non-ASCII sign) fails the whole string; a trailing operator, a comma or a
  semicolon (a list) fails; ``y = 2`` with a letter on the left is 2; ``3 < 4`` is True (1).

Values are exact fractions where the expression is rational, floats otherwise; `is_int` tells
whether Python's ``eval`` would give an int (it matters for the tuple rule, which compares
``str(round(v, 2))``).

>>> latex_value("\\\\frac{1}{3}"), latex_value("1,000"), latex_value("28:28"), latex_value("8.since x")
(0.33, 1000, 1.0, 8)
>>> latex_value("5cm") is None, latex_value("50%") is None, latex_value("3,4") is None, latex_value("\\\\sqrt{4}")
(True, True, True, 2.0)
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from functools import lru_cache

__all__ = ["latex_value", "official_number", "Unparsable"]


class Unparsable(Exception):
    """The official code would fail on this string (its comparison is then false)."""


_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|\.\d+")
_COMMAND = re.compile(r"\\([a-zA-Z]+|.)")
_SINGLE = set("+-*/:^!()[]{}|,;=<>_'.&")
_FUNCS = {
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "arcsin": math.asin, "arccos": math.acos,
    "arctan": math.atan, "sinh": math.sinh, "cosh": math.cosh, "tanh": math.tanh,
}
_FAIL_FUNCS = {"cot", "sec", "csc", "arccot", "arcsec", "arccsc", "ln", "max", "min", "operatorname"}
_RELATIONS = {"le": "<=", "leq": "<=", "ge": ">=", "geq": ">=", "<": "<", ">": ">"}
_SYMBOL_CMDS = {"text", "mathrm", "mathbf", "mathit", "textrm", "mbox", "angle", "triangle", "overline",
                "emptyset", "alpha", "beta", "gamma", "theta", "mu", "phi", "lambda", "delta", "sigma", "omega"}
_STOP_WORDS = re.compile(r"trace|tr|norm|rank|rref|nullspace|colspace|rowspace|eig|diag|gcd|lcm|floor|ceil")
HUGE = 10**5000


def _lex(s: str):
    """(kind, text) tokens, one at a time; kind is num, sym, cmd, op or bad (a character the lexer rejects)."""
    prev: tuple[str, str] | None = None
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch in " \t\n\r":
            i += 1
            continue
        m = _NUMBER.match(s, i)
        if m:
            yield (prev := ("num", m.group(0)))
            i = m.end()
            continue
        if ch == "\\":
            m = _COMMAND.match(s, i)
            if not m:
                yield (prev := ("bad", ch))
                i += 1
                continue
            name = m.group(1)
            i = m.end()
            if name in ("{", "}"):
                yield (prev := ("op", name))
            elif name == "%":
                after_number = prev is not None and prev[0] == "num" and s[i - 3] not in " \t\n"
                yield (prev := ("pct" if after_number else "bad", name))  # "5\%" only: "5 \%", "\frac{1}{2}\%" fail
            elif name == "\\":
                yield (prev := ("op", "&"))  # a line break ends the expression like '&'
            elif name in ("left", "right", "displaystyle", "quad", "qquad", "big", "Big"):
                continue
            elif name.isalpha():
                yield (prev := ("cmd", name))
            else:
                yield (prev := ("bad", name))
            continue
        if ch.isascii() and ch.isalpha():
            m = _STOP_WORDS.match(s, i)
            if m:  # latex2sympy lexes matrix operations ("2 tr", "5 norm") as tokens that end the expression
                yield (prev := ("op", "&"))
                i = m.end()
                continue
            yield (prev := ("sym", ch))
        elif ch in _SINGLE:
            yield (prev := ("op", ch))
        else:
            yield (prev := ("bad", ch))
        i += 1


def _tokens(s: str) -> list[tuple[str, str]]:
    """All the tokens of `s` (see `_lex`)."""
    return list(_lex(s))


class _Stream:
    """Tokens lexed as the parser reaches them: the parse stops at the first token that cannot continue, and
    nothing after it matters, so a long sentence is not lexed to its end (the same result, much sooner)."""

    __slots__ = ("_it", "_toks")

    def __init__(self, s: str):
        self._it, self._toks = _lex(s), []

    def at(self, j: int) -> tuple[str, str] | None:
        while len(self._toks) <= j:
            tok = next(self._it, None)
            if tok is None:
                return None
            self._toks.append(tok)
        return self._toks[j]


class _Num:
    """A value and whether Python's eval of sympy's printed form would be an int."""

    __slots__ = ("v", "is_int")

    def __init__(self, v, is_int: bool):
        if isinstance(v, (int, Fraction)) and abs(v) > HUGE:
            raise Unparsable("huge")
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            raise Unparsable("not finite")
        if isinstance(v, complex):
            raise Unparsable("complex")
        self.v, self.is_int = v, is_int


def _num_literal(text: str) -> _Num:
    f = Fraction(text.replace(",", ""))
    return _Num(f, f.denominator == 1)


def _div(a: _Num, b: _Num) -> _Num:
    if b.v == 0:
        raise Unparsable("division by zero")
    if isinstance(a.v, (int, Fraction)) and isinstance(b.v, (int, Fraction)):
        return _Num(Fraction(a.v) / Fraction(b.v), False)
    return _Num(float(a.v) / float(b.v), False)


def _pow(a: _Num, b: _Num) -> _Num:
    base, exp = a.v, b.v
    if isinstance(exp, Fraction) and exp.denominator == 1:
        exp = int(exp)
    if isinstance(exp, int) and isinstance(base, (int, Fraction)):
        if abs(exp) > 4000 or (exp < 0 and base == 0):
            raise Unparsable("power")
        v = Fraction(base) ** exp
        return _Num(v, a.is_int and b.is_int and exp >= 0)
    try:
        fb, fe = float(base), float(exp)
        if fb < 0 and not float(fe).is_integer():
            raise Unparsable("complex power")
        return _Num(fb**fe, False)
    except (OverflowError, ZeroDivisionError):
        raise Unparsable("power") from None


class _Parser:
    """relation := expr (rel expr)*; expr := term (('+'|'-') term)*; term := unary (mulop unary | implicit)*;
    unary := ('-'|'+') unary | postfix; postfix := atom ('^' exponent | '!' | '\\%' | '_' sub | "'")*"""

    def __init__(self, toks: _Stream):
        self.t, self.i = toks, 0

    def peek(self, k: int = 0) -> tuple[str, str] | None:
        return self.t.at(self.i + k)

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise Unparsable("end")
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok[0] != "op" or tok[1] != text:
            raise Unparsable(f"expected {text}")

    # --- grammar ---
    def expr(self) -> _Num:
        v = self.term()
        while (tok := self.peek()) is not None and tok[0] == "op" and tok[1] in "+-":
            self.i += 1
            r = self.term()
            v = _Num(v.v + r.v if tok[1] == "+" else v.v - r.v, v.is_int and r.is_int)
        return v

    def _starts_atom(self, tok: tuple[str, str] | None) -> bool:
        if tok is None:
            return False
        kind, text = tok
        if kind in ("num", "sym"):
            return True
        if kind == "cmd":
            return text not in ("cdot", "times", "div", "le", "leq", "ge", "geq", "neq", "ne", "rfloor", "rceil",
                                "rvert", "in", "approx", "pm", "mp")
        return kind == "op" and text in ("(", "[", "{")

    def term(self) -> _Num:
        v = self.unary()
        while (tok := self.peek()) is not None:
            kind, text = tok
            if (kind == "op" and text in "*/:") or (kind == "cmd" and text in ("cdot", "times", "div")):
                self.i += 1
                r = self.unary()
                if text in ("*", "cdot", "times"):
                    v = _Num(v.v * r.v if not isinstance(v.v, float) and not isinstance(r.v, float)
                             else float(v.v) * float(r.v), v.is_int and r.is_int)
                else:
                    v = _div(v, r)
            elif self._starts_atom(tok):
                r = self.postfix()
                v = _Num(v.v * r.v if not isinstance(v.v, float) and not isinstance(r.v, float)
                         else float(v.v) * float(r.v), v.is_int and r.is_int)
            else:
                break
        return v

    def unary(self) -> _Num:
        tok = self.peek()
        if tok is not None and tok[0] == "op" and tok[1] in "+-":
            self.i += 1
            v = self.unary()
            return _Num(-v.v if tok[1] == "-" else v.v, v.is_int)
        return self.postfix()

    def postfix(self) -> _Num:
        v = self.atom()
        while (tok := self.peek()) is not None:
            kind, text = tok
            if kind == "op" and text == "^":
                self.i += 1
                v = _pow(v, self.exponent())
            elif kind == "op" and text == "!":
                self.i += 1
                if not v.is_int or v.v < 0 or v.v > 300:
                    raise Unparsable("factorial")
                v = _Num(math.factorial(int(v.v)), True)
            elif kind == "pct":
                self.i += 1
                v = _div(v, _Num(100, True)) if not isinstance(v.v, float) else _Num(v.v / 100, False)
                if isinstance(v.v, Fraction) and v.v.denominator == 1:
                    v.is_int = True
            elif kind == "op" and text == "_":
                self.i += 1
                if self.peek() is not None and self.peek()[0] == "sym":
                    self.i += 1  # "5_x": a subscript on a number is dropped
                else:
                    self.exponent()
            elif kind == "op" and text == "'":
                self.i += 1
            else:
                break
        return v

    def exponent(self) -> _Num:
        kind, text = self.take()
        if kind == "num":
            return _num_literal(text)
        if kind == "op" and text == "{":
            v = self.expr()
            self.expect("}")
            return v
        if kind == "cmd" and text == "pi":
            return _Num(math.pi, False)
        raise Unparsable("exponent")

    def group(self) -> _Num:
        self.expect("{")
        v = self.expr()
        self.expect("}")
        return v

    def atom(self) -> _Num:
        kind, text = self.take()
        if kind == "num":
            return _num_literal(text)
        if kind == "op" and text in "([{":
            close = {"(": ")", "[": "]", "{": "}"}[text]
            v = self.expr()
            self.expect(close)
            return v
        if kind == "sym":
            if text == "e" and self.peek() == ("op", "^"):
                self.i += 1
                x = self.exponent()
                if x.v == 1:
                    raise Unparsable("E")  # exp(1) prints as E
                return _Num(1 if x.v == 0 else math.exp(float(x.v)), x.v == 0)
            raise Unparsable("symbol")
        if kind == "cmd":
            return self.command(text)
        raise Unparsable(text)

    def command(self, name: str) -> _Num:
        if name == "frac" or name in ("binom", "dbinom", "tbinom"):
            a, b = self.group(), self.group()
            if name == "frac":
                return _div(a, b)
            if not (a.is_int and b.is_int):
                raise Unparsable("binom")
            return _Num(math.comb(int(a.v), int(b.v)) if b.v >= 0 else 0, True)
        if name == "sqrt":
            root = None
            if self.peek() == ("op", "["):
                self.i += 1
                root = self.expr()
                self.expect("]")
            x = self.group()
            if root is not None and root.v != 2:
                return _pow(x, _div(_Num(1, True), root))
            if x.v < 0:
                raise Unparsable("sqrt of a negative")
            return _Num(math.sqrt(x.v), False)
        if name == "pi":
            return _Num(math.pi, False)
        if name == "lfloor":
            v = self.expr()
            if self.take() != ("cmd", "rfloor"):
                raise Unparsable("floor")
            return _Num(math.floor(v.v), True)
        if name == "gcd":
            self.expect("(")
            a = self.expr()
            self.expect(",")
            b = self.expr()
            self.expect(")")
            if not (a.is_int and b.is_int):
                raise Unparsable("gcd")
            return _Num(math.gcd(int(a.v), int(b.v)), True)
        if name == "log":
            base: _Num = _Num(10, True)
            if self.peek() == ("op", "_"):
                self.i += 1
                base = self.exponent()
            x = self.func_arg()
            try:
                return _Num(math.log(float(x.v), float(base.v)), False)
            except (ValueError, ZeroDivisionError):
                raise Unparsable("log") from None
        if name == "exp":
            x = self.func_arg()
            if x.v == 1:
                raise Unparsable("E")
            return _Num(1 if x.v == 0 else math.exp(float(x.v)), x.v == 0)
        if name in _FUNCS:
            fn, power = _FUNCS[name], None
            if self.peek() == ("op", "^"):
                self.i += 1
                power = self.exponent()
            x = self.func_arg()
            if power is not None and power.v == -1:
                fn = {"sin": math.asin, "cos": math.acos, "tan": math.atan}.get(name)
                power = None
                if fn is None:
                    raise Unparsable("inverse")
            try:
                v = _Num(fn(float(x.v)), False)
            except (ValueError, OverflowError):
                raise Unparsable("domain") from None
            return _pow(v, power) if power is not None else v
        raise Unparsable(name)  # \infty, \ln, \cot, |x|, \text{...}, Greek letters, unknown commands

    def func_arg(self) -> _Num:
        tok = self.peek()
        if tok is not None and tok[0] == "op" and tok[1] in "([{":
            return self.postfix()
        return self.term()


def _stop_token_ok(tok: tuple[str, str] | None) -> bool:
    """Whether the token that ended the parse leaves the value standing."""
    if tok is None:
        return True
    kind, text = tok
    if kind == "bad" or kind == "pct":
        return False
    if kind == "op":
        return text in ")]}.&'"
    if kind == "cmd":
        return text in ("rfloor", "rceil", "rvert")
    return False


@lru_cache(maxsize=65536)
def official_number(s: str) -> tuple[float | int, bool] | None:
    """(value rounded to 2 places, is_int) of ``eval(str(latex2sympy(s)))``, or None where that fails."""
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("$", " ").replace("~", " ")
    s = s.replace("\\,", " ")
    toks = _Stream(s)
    if toks.at(0) is None:
        return None
    p = _Parser(toks)
    try:
        # "y = 2", "a = b = 3": a letter on the left of '=' gives the right-hand side
        while p.peek(0) is not None and p.peek(0)[0] == "sym" and p.peek(1) == ("op", "="):
            p.i += 2
        v = p.expr()
        rel = p.peek()
        if rel is not None and (rel[1] in ("<", ">") and rel[0] == "op" or rel[0] == "cmd" and rel[1] in _RELATIONS):
            while rel is not None and (rel[0] == "op" and rel[1] in ("<", ">") or rel[0] == "cmd" and rel[1] in _RELATIONS):
                p.i += 1
                r = p.expr()
                op = _RELATIONS[rel[1]]
                a, b = float(v.v), float(r.v)
                truth = a < b if op == "<" else a > b if op == ">" else a <= b if op == "<=" else a >= b
                v = _Num(int(truth), True)
                rel = p.peek()
        if not _stop_token_ok(p.peek()):
            return None
    except (Unparsable, OverflowError, ValueError, ZeroDivisionError, TypeError, RecursionError):
        return None
    value = v.v
    if v.is_int and isinstance(value, (int, Fraction)) and Fraction(value).denominator == 1:
        return int(value), True
    try:
        return round(float(value), 2), False
    except OverflowError:
        return None


def latex_value(s: str) -> float | int | None:
    """``round(eval(str(latex2sympy(s))), 2)`` as MATH-V computes it, or None where it fails (module doc)."""
    out = official_number(s)
    return None if out is None else out[0]
