"""EasyR1's accuracy grader: the last ``\\boxed{}`` of a response, graded by mathruler's rules.

EasyR1's math reward (hiyouga/EasyR1 examples/reward_function/math.py) scores a response 1 when
``grade_answer(extract_boxed_content(response), ground_truth)`` holds, with both functions from the
``mathruler`` package (mathruler/grader.py and mathruler/math_normalize.py, themselves PRM800K's
grader and the Hendrycks MATH normaliser). This module is our implementation of those rules, rule
for rule, so sftrl's study reward judges exactly as the paper's framework did:

`extract_boxed`
    the content of the *last* ``\\boxed{`` in the text, up to its matching brace, stripped; the
    string ``"None"`` when there is no box or it never closes (mathruler returns that string, and
    ``grade_answer("None", gold)`` is then false unless the gold answer is literally "None").
`grade_answer` (given, gold) is true when
    1. the MATH-normalised strings are equal (`normalize_math`: strip, drop an enclosing
       ``\\text{}``, line breaks, ``\\!``, ``\\left``/``\\right``, degrees, ``\\$``, right-hand units
       after ``\\text{ ``, percent signs; ``.5`` -> ``0.5``; a short ``k =`` prefix; ``\\sqrt3`` ->
       ``\\sqrt{3}``; spaces; ``\\frac12`` -> ``\\frac{1}{2}``; ``0.5`` -> ``\\frac{1}{2}``; ``a/b`` ->
       ``\\frac{a}{b}`` for integers), or
    2. the PRM800K-normalised strings are equal (`normalize_prm`: enclosing ``\\text{}``, ``$`` and
       ``%``, "or"/"and" as commas, million/billion/trillion, a fixed list of units, ``^\\circ``,
       outer braces, ``,\\!``, integral floats, LaTeX to text through pylatexenc, mixed numbers
       ``7 3/4`` -> ``7+3/4``, spaces, braces, lower case, integers without commas), or
    3. element by element for tuples and intervals (the brackets must match): fractions must match
       exactly (an unreduced fraction is wrong), an integer must match an integer exactly, and
       anything else is equal when sympy simplifies the difference to 0 -- unless the expression
       has more than two distinct letters or a power form that can hang sympy (``^{``, ``^(``,
       stacked or multi-digit exponents).

EasyR1 first removes whitespace around ``<``, ``>`` and ``/`` in the whole response (its Qwen2.5-VL
32B fix) and grades that text; `accuracy` does the same. The rules were checked against the
``mathruler`` package itself on a table of cases (tests/job_runtime/eval/test_mathruler.py).

>>> accuracy("<think>3 + 4</think> The answer is \\\\boxed{7}.", "7")
1.0
>>> accuracy("<think>3 + 4</think> The answer is 7.", "7")   # no box: 0, whatever the text says
0.0
>>> grade_answer("\\\\frac{1}{2}", "0.5"), grade_answer("2/4", "1/2"), grade_answer("x^2+2x+1", "(x+1)^2")
(True, False, True)
"""

from __future__ import annotations

import re

__all__ = ["accuracy", "extract_boxed", "grade_answer", "normalize_math", "normalize_prm", "collapse_tag_spaces"]

_TAG_SPACES = re.compile(r"\s*(<|>|/)\s*")


def collapse_tag_spaces(response: str) -> str:
    """EasyR1's pre-processing of every response: no whitespace around ``<``, ``>`` and ``/``.

    >>> collapse_tag_spaces("< think > a / b </ think >")
    '<think>a/b</think>'
    """
    return _TAG_SPACES.sub(r"\1", response)


def extract_boxed(text: str) -> str:
    """The stripped content of the last ``\\boxed{...}``, or ``"None"`` when there is none.

    >>> extract_boxed("\\\\boxed{1} then \\\\boxed{\\\\frac{a}{b}}"), extract_boxed("no box"), extract_boxed("\\\\boxed{1")
    ('\\\\frac{a}{b}', 'None', 'None')
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return "None"
    body = text[start + len("\\boxed{") :]
    depth = 0
    for i, ch in enumerate(body):
        depth += 1 if ch == "{" else -1 if ch == "}" else 0
        if depth == -1:
            return body[:i].strip()
    return "None"


def accuracy(response: str, gold: str) -> float:
    """EasyR1's accuracy reward of one response: 1.0 or 0.0."""
    return 1.0 if grade_answer(extract_boxed(collapse_tag_spaces(response)), gold) else 0.0


# --- rule 1: the Hendrycks MATH normaliser (mathruler/math_normalize.py) -----------------------------


def _math_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part[0] == "{":  # IndexError on "\\frac" at the end: the caller keeps the answer unchanged
            out += part
            continue
        if len(part) < 2:
            return s
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}" + (b if b == "{" else "{" + b + "}") + rest
    return out


def _math_slash(s: str) -> str:
    pieces = s.split("/")
    if len(pieces) != 2:
        return s
    try:
        a, b = int(pieces[0]), int(pieces[1])
    except ValueError:
        return s
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


def _math_sqrt(s: str) -> str:
    if "\\sqrt" not in s:
        return s
    parts = s.split("\\sqrt")
    out = parts[0]
    for part in parts[1:]:
        out += "\\sqrt" + (part if part[:1] == "{" else "{" + part[0] + "}" + part[1:])
    return out


def _math_strip(s: str) -> str:
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                     ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", "")):
        s = s.replace(old, new)
    if "\\text{ " in s:  # units on the right
        pieces = s.split("\\text{ ")
        if len(pieces) != 2:
            raise ValueError("more than one unit")
        s = pieces[0]
    s = s.replace("\\%", "").replace("%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = _math_fracs(_math_sqrt(s).replace(" ", ""))
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _math_slash(s)


def normalize_math(answer: str | None) -> str | None:
    """The MATH-dataset normal form (rule 1); unchanged when a rule fails (as mathruler does).

    >>> normalize_math(" \\\\dfrac12 "), normalize_math("x = 3"), normalize_math("50\\\\%")
    ('\\\\frac{1}{2}', '3', '50')
    """
    if answer is None:
        return None
    answer = answer.strip()
    try:
        m = re.search(r"^\\text\{(?P<text>.+?)\}$", answer)
        if m is not None:
            answer = m.group("text").strip()
        return _math_strip(answer)
    except Exception:  # noqa: BLE001 - any failing rule leaves the answer as it was, like mathruler
        return answer


# --- rule 2: the PRM800K normaliser (mathruler/grader.py) -------------------------------------------

_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week", "month",
          "year", "foot", "feet", "inch", "yard")
_PRM_BAD_SUBSTRINGS = ("^{", "^(")
_PRM_BAD_REGEXES = (re.compile(r"\^[0-9]+\^"), re.compile(r"\^[0-9][0-9]+"))
_BRACKETS = "()[]"


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _near_int(x: float) -> bool:
    try:
        return abs(x - int(round(x))) <= 1e-7
    except (OverflowError, ValueError):
        return False


def _drop_thousands_commas(s: str) -> str:
    pattern = re.compile(r"(\d)(,)(\d\d\d)($|\D)")
    while True:
        nxt = pattern.sub(r"\1\3\4", s)
        if nxt == s:
            return nxt
        s = nxt


def _str_is_int(s: str) -> bool:
    try:
        return _near_int(float(_drop_thousands_commas(s)))
    except (ValueError, OverflowError):
        return False


def _latex_to_text(s: str) -> str:
    from pylatexenc import latex2text

    s = s.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    s = latex2text.LatexNodes2Text().latex_to_text(s)
    for old, new in (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*")):
        s = s.replace(old, new)
    return s.strip()


def normalize_prm(expr: str | None) -> str | None:
    """The PRM800K normal form (rule 2).

    >>> normalize_prm("\\\\text{5 cm}"), normalize_prm("7 3/4"), normalize_prm("1,000"), normalize_prm("\\\\frac{1}{2}")
    ('5', '7+3/4', '1000', '1/2')
    """
    if expr is None:
        return None
    m = re.search(r"^\\text\{(?P<text>.+?)\}$", expr)
    if m is not None:
        expr = m.group("text")
    for old, new in (("\\%", "%"), ("\\$", "$"), ("$", ""), ("%", ""), (" or ", " , "), (" and ", " , "),
                     ("million", "*10^6"), ("billion", "*10^9"), ("trillion", "*10^12")):
        expr = expr.replace(old, new)
    for unit in _UNITS:
        expr = re.sub(rf"{unit}(es)?(s)? *(\^[0-9]+)?", "", expr)
    expr = re.sub(r"\^ *\\circ", "", expr)
    if expr[:1] == "{" and expr[-1:] == "}":
        expr = expr[1:-1]
    expr = re.sub(",\\\\! *", "", expr)
    if _is_float(expr) and _near_int(float(expr)):
        expr = str(int(round(float(expr))))
    if "\\" in expr:
        try:
            expr = _latex_to_text(expr)
        except Exception:  # noqa: BLE001 - unparsable LaTeX stays as it is, like mathruler
            pass
    expr = re.sub("- *", "-", expr)
    expr = re.sub("([0-9]) +([0-9])", r"\1+\2", expr)  # mixed numbers: 7 3/4 -> 7+3/4
    expr = expr.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _str_is_int(expr):
        expr = str(int(float(expr.replace(",", ""))))
    return expr


# --- rule 3: element-wise, with sympy --------------------------------------------------------------


def _sympy_safe(expr: str) -> bool:
    letters = {c for c in expr.replace("sqrt", "").replace("frac", "") if c.isalpha()}
    if len(letters) > 2 or any(bad in expr for bad in _PRM_BAD_SUBSTRINGS):
        return False
    return not any(p.search(expr) for p in _PRM_BAD_REGEXES)


def _sympy_equal(gold: str, given: str) -> bool:
    import sympy
    from sympy.parsing import sympy_parser

    expr = f"({gold})-({given})"
    if not _sympy_safe(expr):
        return False
    try:
        transforms = sympy_parser.standard_transformations + (sympy_parser.implicit_multiplication_application,)
        diff = sympy_parser.parse_expr(expr.replace("^", "**"), transformations=transforms)
        return sympy.simplify(diff) == 0
    except Exception:  # noqa: BLE001 - sympy raises many types; unparsable means "not shown equal"
        return False


def _elements(expr: str) -> list[str]:
    expr = _drop_thousands_commas(expr)
    if not expr:
        return []
    if len(expr) > 2 and expr[0] in _BRACKETS and expr[-1] in _BRACKETS and not any(c in expr[1:-1] for c in _BRACKETS):
        return [e.strip() for e in expr[1:-1].split(",")]
    return [expr]


def _is_fraction(s: str) -> bool:
    return bool(re.search(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$", s))


def grade_answer(given: str | None, gold: str) -> bool:
    """True when `given` is the `gold` answer under mathruler's three rules (see the module doc).

    >>> grade_answer("(1, 2)", "(1,2)"), grade_answer("[1, 2)", "(1, 2)"), grade_answer("10", "10.0")
    (True, False, True)
    """
    if given is None:
        return False
    if normalize_math(gold) == normalize_math(given):
        return True
    gold_n, given_n = normalize_prm(gold), normalize_prm(given)
    if gold_n is None:
        return False
    if gold_n == given_n:
        return True
    if not given_n:
        return False
    gold_e, given_e = _elements(gold_n), _elements(given_n)
    if len(gold_e) > 1 and (gold_n[0] != given_n[0] or gold_n[-1] != given_n[-1]):
        return False
    if len(gold_e) != len(given_e):
        return False
    for g, p in zip(gold_e, given_e):
        if _is_fraction(g) and _is_fraction(p):
            ok = g == p  # an unreduced fraction is not accepted
        elif _str_is_int(g) != _str_is_int(p):
            ok = False  # an integer answer must match exactly
        else:
            ok = _sympy_equal(g, p)
        if not ok:
            return False
    return True
