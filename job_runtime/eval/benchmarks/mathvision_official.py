"""MATH-V's official rule-based scoring, rule for rule, without latex2sympy.

Written from mathllm/MATH-V evaluation/evaluate.py (``evaluate``) and evaluation/utils.py
(``find_math_answer``, ``_strip_string``, ``eval_tuple``, ``is_equal``); latex2sympy's numbers come
from job_runtime.eval.benchmarks.latex_value. The rules, in order:

1. `official_answer`: the stripped response; it becomes a bare letter when it ends " C." or
   " (C)." or starts "C\\n", "(C)\\n" or "(C) C\\n"; the text after its last "is " when that parses
   as a Python float; without any "oxed{": the text after each answer flag in turn ("the final
   answer is", "the answer is", "the correct answer is", "the answer should be", each also with
   "The"), cut at the first line break and the first ". " when the flag was there; with several
   boxes only the last one is kept; then `find_math_answer`, "(a)"/"{a}" to "a" for a-e, and
   trailing dots, leading colons and spaces dropped.
2. `find_math_answer`: lower-cased; "{}" removed; the greedy ``oxed{(.*)}`` match; cut at a
   "}" with no "{" before it; the part after the last "=" and the last "\\approx"; spaces, "\\,",
   "\\text", "\\mbox", "\\left", "\\right", degrees, "m^3", "units" and "km" removed;
   then `strip_string` (utils.py's ``_strip_string``).
3. `official_equal` (``is_equal``): both lower-cased; empty is false; equal strings are true;
   tuples and lists are evaluated element-wise (``eval_tuple``) and compared as strings; else
   both values, rounded to 2 places, must be equal (`latex_value`), any failure being false.
4. A response is right when its answer equals the answer letter or, for multiple choice, the
   text of the right option.

>>> official_answer("Thus the answer is 12."), official_answer("... so we get \\\\boxed{\\\\frac{1}{2}}.")
('12', '\\\\frac{1}{2}')
>>> official_equal("\\\\frac{1}{3}", "0.33"), official_equal("5", "5 cm"), official_equal("(1,2)", "(1.0, 2)")
(True, False, True)
"""

from __future__ import annotations

import re

from job_runtime.eval.benchmarks.latex_value import official_number

FLAGS = ("the final answer is", "the answer is", "the correct answer is", "the answer should be")
_BOXED = re.compile(r"oxed{(.*)}", re.S)


def _is_float(s: str) -> bool:
    """Python's ``float(s)`` succeeds (utils.py's is_number): "12", " 3.5 ", "1e3", "nan", "1_000"."""
    try:
        float(s)
        return True
    except ValueError:
        return False


def official_answer(response: str) -> str:
    """The answer MATH-V's evaluate.py reads from a response (rule 1 of the module doc)."""
    ans = response.strip()
    for c in "ABCDE":
        if (ans.endswith(f" {c}.") or ans.endswith(f" ({c}).") or ans.startswith(f"{c}\n")
                or ans.startswith(f"({c})\n") or ans.startswith(f"({c}) {c}\n")):
            ans = c
    tail = ans.split("is ")[-1].rstrip(".")
    if _is_float(tail):
        ans = tail
    if "oxed{" not in ans:
        for flag in FLAGS:
            for f in (flag, flag.replace("the", "The")):
                had = f in ans
                ans = ans.split(f)[-1].strip()
                if had:
                    ans = ans.split("\n")[0].split(". ")[0]
    elif ans.count("oxed{") > 1:
        ans = "\\boxed{" + ans.split("oxed{")[-1]
    ans = find_math_answer(ans)
    for c in "abcde":
        ans = ans.replace(f"({c})", c)
    for c in "abcde":
        ans = ans.replace("{" + c + "}", c)
    return ans.rstrip(".").lstrip(":").strip()


def find_math_answer(s: str) -> str:
    """utils.py's find_math_answer (rule 2 of the module doc).

    >>> find_math_answer("So $x = 5$ cm"), find_math_answer("\\\\boxed{45^\\\\circ}"), find_math_answer("12 units")
    ('5cm', '45', '12')
    """
    s = s.lower().replace("{}", "")
    found = _BOXED.findall(s)
    ans = found[-1] if found else s
    close, open_ = ans.find("}"), ans.find("{")
    if close != -1 and (open_ == -1 or close < open_):
        ans = ans.split("}")[0]
    ans = ans.split("=")[-1].split("\\approx")[-1]
    ans = ans.replace(" ", "").replace("\\,", "").replace("∞", "\\infty")
    ans = ans.replace("+\\infty", "\\infty").replace("\\\\", "\\").replace("\n", "")
    ans = ans.replace("\\text", "").replace("\\mbox", "").replace("bmatrix", "pmatrix")
    ans = ans.replace("\\left", "").replace("\\right", "").replace("^{\\circ}", "")
    ans = ans.replace("^\\circ", "").replace("{m}^3", "").replace("m^3", "")
    ans = ans.replace("{units}", "").replace("units", "").replace("{km}", "").replace("km", "")
    return strip_string(ans)


def _fix_sqrt(s: str) -> str:
    """"\\sqrt3" -> "\\sqrt{3}" (one character)."""
    parts = s.split("\\sqrt")
    out = parts[0]
    for part in parts[1:]:
        out += "\\sqrt{" + part[0] + "}" + part[1:] if part and part[0] != "{" else "\\sqrt" + part
    return out


def _fix_fracs(s: str) -> str:
    """"\\frac12" -> "\\frac{1}{2}", "\\frac1{2}" -> "\\frac{1}{2}"; unchanged when too short."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part and part[0] == "{":
            out += part
            continue
        if len(part) < 2:
            return s
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}{" + b + "}" + rest if b != "{" else "{" + a + "}" + b + rest
    return out


def _fix_a_slash_b(s: str) -> str:
    """"3/4" -> "\\frac{3}{4}" when both sides are integers written plainly."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}" if s == f"{a}/{b}" else s


def strip_string(s: str) -> str:
    """utils.py's _strip_string: line breaks, "\\!", doubled backslashes, dfrac/tfrac, \\left/\\right,
    degrees, dollars, a right "\\text{ " unit, percent signs; ".5" -> "0.5"; the side after a single "="
    or "\\approx"; sqrt and frac braces (frac only when "sqrt" is present); spaces; "0.5" -> "\\frac{1}{2}";
    "a/b" -> "\\frac{a}{b}".

    >>> strip_string("0.5"), strip_string("x = 3/4"), strip_string("\\\\sqrt3"), strip_string("50\\\\%")
    ('\\\\frac{1}{2}', '\\\\frac{3}{4}', '\\\\sqrt{3}', '50')
    """
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "").replace("$", "")
    s = s.split("\\text{ ")[0]
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if len(s.split("=")) == 2:
        s = s.split("=")[-1]
    if len(s.split("\\approx")) == 2:
        s = s.split("\\approx")[-1]
    if "sqrt" in s:
        s = _fix_sqrt(s)
    s = s.replace(" ", "")
    if "sqrt" in s:
        s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def _fmt(value: float | int, is_int: bool) -> str:
    return str(int(value)) if is_int else str(float(value))


def eval_tuple(s: str) -> str:
    """utils.py's eval_tuple: "(a,b)" / "[a,b]" with each element's value rounded to 2 places; the
    string unchanged when any element fails or it is not such a tuple.

    >>> eval_tuple("(\\\\frac{1}{2},3)"), eval_tuple("(a,-a)"), eval_tuple("(x,1)")
    ('(0.5,3)', '(a,-a)', '(x,1)')
    """
    if not s or s[0] not in "([" or s[-1] != {"(": ")", "[": "]"}[s[0]]:
        return s
    parts = s[1:-1].split(",")
    if len(parts) <= 1:
        return s
    out = []
    for sub in parts:
        if "infty" in sub or sub in ("a", "-a"):
            out.append(sub)
            continue
        num = official_number(sub)
        if num is None:
            return s
        out.append(_fmt(*num))
    return s[0] + ",".join(out) + s[-1]


def official_equal(answer: str, gold: str) -> bool:
    """utils.py's is_equal (rule 3 of the module doc); symmetric."""
    a, g = answer.lower(), gold.lower()
    if not a.replace(" ", "") or not g.replace(" ", ""):
        return False
    if a.strip() == g.strip():
        return True
    a, g = eval_tuple(a), eval_tuple(g)
    if a == g:
        return True
    va, vg = official_number(g), official_number(a)
    return va is not None and vg is not None and va[0] == vg[0]


def official_verdict(gold: str, options: list[str], response: str) -> tuple[str, bool]:
    """(answer read, correct) as evaluate.py decides it (rule 4 of the module doc)."""
    value = options[ord(gold) - ord("A")] if options and len(gold) == 1 and 0 <= ord(gold) - ord("A") < len(options) else ""
    ans = official_answer(response)
    return ans, official_equal(gold, ans) or official_equal(value, ans)
