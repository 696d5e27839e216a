"""How often a scorer's verdict agrees with the official verdicts (real responses) and with the truth
(generated responses to the real questions).

First table (bench/official_agreement.py): real responses of published models with each
benchmark's official verdicts (../shared/eval-gold), scored by sftrl's ``official`` and ``strict``
protocols, by math-verify alone and by MathRuler (EasyR1's grader): agreement, false positives and
negatives, per question type, per source model (accuracy gap in points); for MathVista what each rule
of the stand-in adds per model, leave-one-model-out figures and the noise census.

Second table, below: generated responses with known truth, scored by the ``strict`` protocol
(``--protocol`` to change it).

For each item of the real MathVista testmini and MathVision test files (../shared/benchmarks), it
builds responses whose truth is known by construction and asks three scorers for a verdict:

1. sftrl: the benchmark's own scoring (job_runtime.eval.benchmarks ``score_rows``, exactly what
   ``python -m job_runtime score`` runs);
2. math-verify alone: ``verify(parse(gold), parse(whole response))``, timeouts off, as commonly used;
3. last-boxed exact match: the last ``\\boxed{}`` equals the gold after removing whitespace -- a
   stand-in for naive rule scorers, not any particular library.

The baselines get the gold cleaned of ``$``, a ``\\boxed{}`` wrapper and JSON escape damage; for
multiple choice any gold letter or the gold option's text counts (generous to them).

Right answers are written as models write them: ``\\boxed{X}``, "The answer is (B)", "Answer: B.",
"**Final answer:** 12", a bare last line, after a chain of thought full of other numbers; option
text for the letter, "(B) text", fractions as decimals and back, ``\\frac``, units, degrees,
percentages, thousands separators, ``\\text{}``. Wrong answers: another option (letter or text), a
number off by one in its last digit, a different fraction. Hard styles (--hard-share of each
truth, 0.25): the right answer retracted mid-reasoning before a wrong final one, the mirror (a
wrong one retracted before the right final one), and a response cut off after mentioning the right
value. Each item gets one right and one wrong response; the other forms are drawn among those that
apply to the item, weighted so rare forms get about as many rows as common ones, each in a random
wrapper; seeded. The per-style rows are the result; the overall rates depend on this mix.

Limits: generated responses, not real model outputs (real ones are messier: hedges, several
answers, other languages); official verdicts (MathVista's GPT-4 extraction) were not available,
so "truth" is the construction's. Percent and degree forms appear only where the question
mentions them, units only where the row or question names one.

    python bench/score_agreement.py [--items 1000] [--seed 0] [--hard-share 0.25] [--show 0]
                                    [--protocol strict] [--no-official] [--no-math-verify]
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import sys
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from job_runtime.eval.benchmarks.registry import get  # noqa: E402
from job_runtime.eval.benchmarks.scoring import score_rows  # noqa: E402

DATA = ROOT.parent / "shared" / "benchmarks"
FILES = {"mathvista": "mathvista_testmini.json", "mathvision": "mathvision_test.jsonl"}
L = "ABCDEFGHIJ"
ESCAPES = {"\x0c": "\\f", "\x08": "\\b", "\x07": "\\a", "\x0b": "\\v"}

# --- items: the gold, as a reader of the answer key understands it ---------------------------


def clean_gold(s: str) -> str:
    s = "".join(ESCAPES.get(ch, ch) for ch in s).strip().strip("$").strip()
    m = re.fullmatch(r"\\boxed\{(.*)\}", s)
    return m.group(1).strip() if m else s


def fraction_of(s: str) -> Fraction | None:
    if re.fullmatch(r"-?\d+(\.\d+)?", s):
        return Fraction(s)
    m = re.fullmatch(r"(-?)(?:\\frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+))", s)
    if m and int(m.group(3) or m.group(5)) != 0:
        f = Fraction(int(m.group(2) or m.group(4)), int(m.group(3) or m.group(5)))
        return -f if m.group(1) else f
    return None


def make_item(name: str, row: dict) -> dict:
    q = str(row.get("question", ""))
    if name == "mathvista":
        opts = [str(c) for c in row["choices"]] if row.get("question_type") == "multi_choice" else []
        gold = str(row["answer"])
        letters = {L[i] for i, c in enumerate(opts) if c == gold}
    else:
        opts = [clean_gold(str(o)) for o in row.get("options") or []]
        gold = clean_gold(str(row["answer"]))
        letters = set()
        if gold in L[: len(opts) or 5] and len(gold) == 1:
            letters = {gold} | ({L[i] for i, o in enumerate(opts) if o == opts[L.index(gold)]} if opts else set())
            gold = opts[L.index(gold)] if opts else gold
    item = {"row": row, "q": q.lower(), "opts": opts, "gold": gold, "letters": letters, "unit": row.get("unit")}
    item["value"] = None if letters else fraction_of(gold)
    item["num"] = item["value"] is not None
    # option text that reads as a letter ("(b)" at position E), or options that are the letters: no text forms
    item["text_ok"] = bool(opts) and not any(re.fullmatch(r"\(?[A-Za-z]\)?\.?", o) for o in opts)
    return item


# --- styles: how an answer is written (right ones keep the value, wrong ones change it) ------


def letter_form(letter: str, rng: random.Random) -> str:
    return rng.choice([letter, f"({letter})", f"\\text{{{letter}}}", f"Option {letter}"])


def small_frac(v: Fraction | None) -> bool:
    return v is not None and v.denominator != 1 and v.denominator <= 20


def terminating(v: Fraction) -> bool:  # a short exact decimal: the denominator divides 10**12
    return v.denominator <= 1000 and 10**12 % v.denominator == 0


def decimal(v: Fraction) -> str:
    return format(float(v), "f").rstrip("0").rstrip(".") if v.denominator != 1 else str(v.numerator)


def unit_of(item: dict) -> str | None:
    m = re.search(r"\b(cm|mm|km|meters|metres|kg|units|cm\^2|cm²|m²)\b", item["q"])
    return item["unit"] or (m.group(1) if m else None)


def off_by_one(gold: str, rng: random.Random) -> str | None:
    """The last number of the gold moved by one in its last digit (never to a negative)."""
    ms = list(re.finditer(r"\d+(?:\.\d+)?", gold))
    if not ms:
        return None
    m = ms[-1]
    places = len(m.group(0).split(".")[1]) if "." in m.group(0) else 0
    v, step = Fraction(m.group(0)), Fraction(1, 10**places)
    new = v + step if v - step < 0 or rng.random() < 0.5 else v - step
    text = f"{float(new):.{places}f}" if places else str(int(new))
    return gold[: m.start()] + text + gold[m.end() :]


def wrong_fraction(v: Fraction, rng: random.Random) -> str:
    p, q = abs(v.numerator), v.denominator
    cands = [Fraction(q, p) if p else None, Fraction(p + 1, q), Fraction(p, q + 1), Fraction(max(p - 1, 1), q)]
    w = rng.choice([c for c in cands if c is not None and c != abs(v)])
    w = -w if v < 0 else w
    return rng.choice([f"\\frac{{{w.numerator}}}{{{w.denominator}}}", f"{w.numerator}/{w.denominator}", decimal(w)
                       if terminating(w) else f"{w.numerator}/{w.denominator}"])


def _right_plain(it, r):
    return letter_form(r.choice(sorted(it["letters"])), r) if it["letters"] else it["gold"]


RIGHT = {  # name: (applies, surface)
    "letter": (lambda it: bool(it["letters"]), lambda it, r: letter_form(r.choice(sorted(it["letters"])), r)),
    "letter+text": (lambda it: it["text_ok"],
                    lambda it, r: r.choice(["({}) {}", "{}. {}"]).format(r.choice(sorted(it["letters"])), it["gold"])),
    "option text": (lambda it: it["text_ok"], lambda it, r: it["gold"]),
    "as given": (lambda it: not it["letters"], lambda it, r: it["gold"]),
    "frac<->decimal": (lambda it: small_frac(it["value"]) and (terminating(it["value"]) or "." in it["gold"]),
                       lambda it, r: f"{it['value'].numerator}/{it['value'].denominator}" if "." in it["gold"]
                       else decimal(it["value"])),
    "\\frac": (lambda it: small_frac(it["value"]) and "frac" not in it["gold"],
               lambda it, r: r.choice(["\\frac{{{}}}{{{}}}", "\\dfrac{{{}}}{{{}}}"]).format(
                   it["value"].numerator, it["value"].denominator)),
    "unit": (lambda it: it["num"] and unit_of(it) is not None,
             lambda it, r: r.choice(["{} {}", "{}\\text{{ {}}}", "{} \\mathrm{{{}}}"]).format(it["gold"], unit_of(it))),
    "degrees": (lambda it: it["num"] and re.search(r"angle|degree|∠|°", it["q"]) is not None,
                lambda it, r: it["gold"] + r.choice(["^\\circ", "°", "^{\\circ}"])),
    "percent": (lambda it: it["num"] and re.search(r"\bpercent(age)?\b|what %", it["q"]) is not None,
                lambda it, r: it["gold"] + r.choice(["\\%", "%"])),
    "thousands": (lambda it: it["num"] and abs(it["value"]) >= 1000,
                  lambda it, r: re.sub(r"\B(?=(\d{3})+(?!\d))", r.choice([",", "{,}"]), it["gold"].split(".")[0])
                  + ("." + it["gold"].split(".")[1] if "." in it["gold"] else "")),
    "\\text{}": (lambda it: (it["num"] or it["text_ok"]) and "\\" not in it["gold"],
                 lambda it, r: f"\\text{{{it['gold']}}}"),
    "mid-CoT wrong phrase, final right": (lambda it: True, _right_plain),
    "mid-CoT wrong \\boxed, final right": (lambda it: True, _right_plain),
}


def _other_letter(it, r):
    others = [L[i] for i, o in enumerate(it["opts"] or "ABCDE") if L[i] not in it["letters"] and o != it["gold"]]
    return r.choice(others) if others else None


def wrong_surface(it: dict, r: random.Random) -> str | None:
    if it["letters"]:
        return (x := _other_letter(it, r)) and letter_form(x, r)
    return off_by_one(it["gold"], r)


WRONG = {
    "wrong letter": (lambda it: bool(it["letters"]), wrong_surface),
    "wrong option text": (lambda it: it["text_ok"],
                          lambda it, r: (x := _other_letter(it, r)) and it["opts"][L.index(x)]),
    "off by one": (lambda it: not it["letters"] and re.search(r"\d", it["gold"]) is not None,
                   lambda it, r: off_by_one(it["gold"], r)),
    "wrong fraction": (lambda it: small_frac(it["value"]), lambda it, r: wrong_fraction(it["value"], r)),
    "mid-CoT right phrase, final wrong": (lambda it: True, wrong_surface),
    "mid-CoT right \\boxed, final wrong": (lambda it: True, wrong_surface),
    "cut off after right value": (lambda it: True, lambda it, r: ""),
}

# --- responses: a chain of thought with other numbers, then the answer in a wrapper ----------

TEMPLATES = {  # name: (format, boxed)
    "\\boxed": ("{cot}\n\nTherefore, the final answer is $\\boxed{{{ans}}}$.", True),
    "<think> + \\boxed": ("<think>\n{cot}\n</think>\n\n\\boxed{{{ans}}}", True),
    "**Final Answer** \\[\\boxed\\]": ("{cot}\n\n**Final Answer**\n\\[\n\\boxed{{{ans}}}\n\\]", True),
    "The answer is X.": ("{cot}\n\nSo the answer is {ans}.", False),
    "Answer: X.": ("{cot}\n\nAnswer: {ans}.", False),
    "**Final answer:** X": ("{cot}\n\n**Final answer:** {ans}", False),
    "bare last line": ("{cot}\n\n{ans}", False),
}
SENTENCES = [
    "Looking at the figure, the marked lengths are {a} and {b}.",
    "By the Pythagorean theorem, $c = \\sqrt{{{a}^2 + {b}^2}} = \\sqrt{{{s}}}$.",
    "The area of the rectangle is ${a} \\times {b} = {ab}$ square units.",
    "Half of that is $\\frac{{{ab}}}{{2}}$, and adding {b} gives a total of {c}.",
    "The angle at $B$ is ${d}^\\circ$, so the remaining angle is ${e}^\\circ$.",
    "Counting row by row: {a}, then {b}, so {apb} objects so far.",
    "If we try $x = {a}$, then ${a} + {b} = {apb}$, which does not match the condition.",
    "Option ({letter}) would need the value {c}, so we keep checking.",
    "About {p}% of the bars are above {a}, and the largest bar is near {ab}.",
]


def chain_of_thought(r: random.Random, mention: str | None = None) -> str:
    parts = []
    for _ in range(r.randint(3, 18)):
        a, b, d = r.randint(2, 40), r.randint(2, 40), r.choice([30, 45, 60, 72])
        parts.append(r.choice(SENTENCES).format(a=a, b=b, s=a * a + b * b, ab=a * b, c=a * b // 2 + b, d=d, e=180 - 2 * d,
                                                apb=a + b, letter=r.choice("ABCDE"), p=r.randint(5, 95)))
    if mention:
        parts.insert(r.randint(1, len(parts) - 1), mention)
    return "".join(p + r.choice([" ", " ", "\n\n"]) for p in parts).strip()  # paragraphs, as models write


def mention(ans: str, r: random.Random, kind: str) -> str:
    """An answer inside the reasoning: a retracted phrase, a retracted \\boxed, or a plain value."""
    if kind == "phrase":
        return r.choice([f"At first glance the answer is {ans}, but let me double-check this.",
                         f"So the answer would be {ans}. Hmm, wait, I should recheck the second case."])
    if kind == "boxed":
        return f"So one candidate is \\boxed{{{ans.strip('$')}}}? Let me verify that again."
    if ans.startswith("("):
        return r.choice([f"So far option {ans} fits the picture.", f"Comparing with {ans}, the values look close."])
    return r.choice([f"This gives {ans} for the first part.", f"So the value so far is {ans}, and we continue."])


def build(it: dict, style: str, surface: str, r: random.Random) -> tuple[str, str]:
    """(response, wrapper name)."""
    right = f"({r.choice(sorted(it['letters']))})" if it["letters"] else f"${it['gold']}$"
    if style == "cut off after right value":
        cot = chain_of_thought(r, mention(right, r, "value"))
        return (r.choice(["<think>\n", ""]) + cot + " Now, for the remaining case we need to compute the", "cut off")
    said = None
    if style.startswith("mid-CoT right"):
        said = mention(right, r, "boxed" if "boxed" in style else "phrase")
    elif style.startswith("mid-CoT wrong"):
        wrong = f"({_other_letter(it, r)})" if it["letters"] else f"${off_by_one(it['gold'], r) or '2' + it['gold']}$"
        said = mention(wrong, r, "boxed" if "boxed" in style else "phrase")
    name = r.choice(sorted(TEMPLATES))
    fmt, boxed = TEMPLATES[name]
    ans = surface.replace("$", "") if boxed else (f"${surface}$" if "\\" in surface and "$" not in surface else surface)
    return fmt.format(cot=chain_of_thought(r, said), ans=ans), name


def generate(name: str, items: list[dict], seed: int, hard_share: float) -> list[dict]:
    """One right and one wrong response per item; a share of them are the hard (mid-CoT, cut off) styles."""
    out, applies = [], {s: sum(ok(it) for it in items) for s, (ok, _) in (RIGHT | WRONG).items()}
    for it in items:
        r = random.Random(f"{seed}:{name}:{it['row'].get('pid', it['row'].get('id'))}")
        for truth, styles in ((True, RIGHT), (False, WRONG)):
            hard = r.random() < hard_share
            pool = [s for s, (ok, _) in styles.items() if ok(it)]
            pool = [s for s in pool if s.startswith(("mid-CoT", "cut off")) == hard] or pool
            for _ in range(20):  # a style whose surface cannot be made for this item is redrawn
                style = r.choices(pool, [1 / applies[s] for s in pool])[0]  # rare forms as often as common ones
                surface = styles[style][1](it, r)
                if surface is not None:
                    break
            else:
                continue  # no style fits this item (none so far)
            resp, wrapper = build(it, style, surface, r)
            out.append({"item": it, "truth": truth, "style": style, "wrapper": wrapper, "response": resp})
    return out


# --- the three scorers -----------------------------------------------------------------------


def gold_targets(it: dict) -> list[str]:
    return sorted(it["letters"]) + [it["gold"].replace("$", "")] if it["letters"] else [it["gold"]]


def last_boxed(text: str) -> str | None:
    i = text.rfind("\\boxed{")
    if i < 0:
        return None
    depth, start = 0, i + len("\\boxed")
    for j in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[start + 1 : j]
    return None


def boxed_exact(case: dict) -> bool:
    box = last_boxed(case["response"])
    return box is not None and re.sub(r"\s+", "", box) in {re.sub(r"\s+", "", t) for t in gold_targets(case["item"])}


def math_verify_verdict(case: dict, gold_cache: dict) -> bool:
    from math_verify import parse, verify

    try:
        pred = parse(case["response"], parsing_timeout=None)
        for t in gold_targets(case["item"]):
            if t not in gold_cache:
                gold_cache[t] = parse(f"${t}$", parsing_timeout=None)
            if gold_cache[t] and pred and verify(gold_cache[t], pred, timeout_seconds=None):
                return True
    except Exception:  # noqa: BLE001 - a crash is a "wrong" verdict, as in reward code
        return False
    return False


# --- report ----------------------------------------------------------------------------------

SCORERS = ("sftrl", "math-verify", "last-boxed EM")


def pct(hits: int, n: int) -> str:
    return f"{100 * hits / n:5.1f}%" if n else "    - "


def row(label: str, truth: str, cs: list[dict]) -> str:
    cells = "".join(f"{pct(sum(c['v'][s] == c['truth'] for c in cs), len(cs)):>15}" for s in SCORERS)
    return f"  {label:<34}{truth:>6}{len(cs):>6}{cells}"


def report(name: str, cases: list[dict], n_items: int) -> None:
    print(f"\n{name}: {n_items} items, {len(cases)} responses; % of verdicts agreeing with the truth")
    head = "".join(f"{s:>15}" for s in SCORERS)
    print(f"  {'response style':<34}{'truth':>6}{'n':>6}{head}")
    for truth in (True, False):
        for style in sorted({c["style"] for c in cases if c["truth"] == truth}):
            print(row(style, "right" if truth else "wrong", [c for c in cases if c["style"] == style]))
    print(f"  {'answer wrapper (right and wrong)':<34}")
    for wrapper in sorted({c["wrapper"] for c in cases}, key=lambda w: (w == "cut off", w)):
        print(row(wrapper, "", [c for c in cases if c["wrapper"] == wrapper]))
    wrong, right = ([c for c in cases if c["truth"] == t] for t in (False, True))
    for label, cs, bad in (("agreement", cases, None), ("false positives (wrong judged right)", wrong, True),
                           ("false negatives (right judged wrong)", right, False)):
        counts = [sum((c["v"][s] == c["truth"]) if bad is None else (c["v"][s] == bad) for c in cs) for s in SCORERS]
        print(f"  {label:<34}{'':>6}{len(cs):>6}" + "".join(f"{k:>8}{pct(k, len(cs)):>7}" for k in counts))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1000, help="items sampled per benchmark (all when fewer)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hard-share", type=float, default=0.25,
                   help="share of responses in the hard styles (mid-CoT answers, cut off); overall rates depend on it")
    p.add_argument("--show", type=int, default=0, help="print this many sftrl disagreements per benchmark")
    p.add_argument("--protocol", default="strict", choices=("official", "strict"),
                   help="sftrl's protocol in the generated-response table")
    p.add_argument("--no-official", action="store_true", help="skip the table on real responses with official verdicts")
    p.add_argument("--no-math-verify", action="store_true", help="skip math-verify on the real responses (slow)")
    args = p.parse_args(argv)
    if not args.no_official:
        import official_agreement

        print("== 1. real responses, official verdicts ==")
        official_agreement.main(["--no-math-verify"] if args.no_math_verify else [])
        print(f"\n== 2. generated responses, known truth (sftrl protocol: {args.protocol}) ==")
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" on every call
    import math_verify  # noqa: F401 - start-up cost kept out of the timings

    for name, file in FILES.items():
        path = DATA / file
        if not path.exists():
            print(f"{path} is missing: {name} skipped. Put the official file there to measure it.")
            continue
        bench = get(name)
        rows = bench.load(str(path))
        rows = random.Random(args.seed).sample(rows, min(args.items, len(rows)))
        cases = generate(name, [make_item(name, r) for r in rows], args.seed, args.hard_share)
        t0 = time.perf_counter()
        verdicts = score_rows(bench, [c["item"]["row"] for c in cases], [c["response"] for c in cases], workers=1,
                              protocol=args.protocol)
        t1 = time.perf_counter()
        gold_cache: dict = {}
        for c, v in zip(cases, verdicts):
            c["v"], c["extracted"] = {"sftrl": bool(v.correct), "last-boxed EM": boxed_exact(c)}, v.extracted
        t2 = time.perf_counter()
        for c in cases:
            c["v"]["math-verify"] = math_verify_verdict(c, gold_cache)
        seconds = {"sftrl": t1 - t0, "math-verify": time.perf_counter() - t2}
        report(name, cases, len(rows))
        print("  scoring seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
        for c in [c for c in cases if c["v"]["sftrl"] != c["truth"]][: args.show]:
            print(f"\n--- sftrl said {c['v']['sftrl']} (truth {c['truth']}, {c['style']}, {c['wrapper']}), "
                  f"gold {c['item']['gold']!r} {c['item']['opts']}, extracted {c['extracted']!r}\n{c['response'][-300:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
