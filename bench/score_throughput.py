"""Scoring throughput on the real MathVision test file with synthetic responses.

Builds one deterministic synthetic response per row of ../shared/benchmarks/mathvision_test.jsonl
(3,040 items) from a realistic mix of formats -- about 40% right answers written in varied forms
(boxed, "The answer is", "Answer: (B)", **Final Answer**, \\text{}, thousands separators, units,
degrees, decimals for fractions, a/b for \\frac), 45% wrong answers (another letter, another
number, another expression), 10% responses with no answer (cut off), 5% short direct answers --
each after ~2 KB of reasoning, then scores them with `score_rows` in one process and with the
worker processes, and prints items/s. Then the same for MathVista on real responses: the 9,000 of
../shared/eval-gold/mathvista_dev.jsonl.gz (9 published models x testmini), whose ``official``
protocol runs the stand-in for the GPT-4 extraction. Target: >= 2,000 items/s on 2 cores.

    python bench/score_throughput.py [--input mathvision_test.jsonl] [--workers 2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gzip  # noqa: E402
import json  # noqa: E402

from job_runtime.eval.benchmarks.registry import get  # noqa: E402
from job_runtime.eval.benchmarks.scoring import score_rows  # noqa: E402

REASONING = (
    "Let me look at the figure carefully. The diagram shows several shapes with labelled lengths; the side "
    "AB = {a} and BC = {b}, so the area of the rectangle is {a} \\times {b} = {ab}. Next we consider the triangle: "
    "by the Pythagorean theorem $c^2 = a^2 + b^2$, hence $c = \\sqrt{{{a2b2}}}$. The remaining region is "
    "obtained by subtracting the two areas, i.e. $S = {ab} - \\frac{{1}}{{2}} \\cdot {a} \\cdot {b}$. "
    "We must also check the other cases: if the point moves to the right, the angle becomes {deg}^\\circ and "
    "the configuration is symmetric, so nothing changes. Counting again to be sure: 1, 2, 3, ... the pattern "
    "repeats every {b} steps. "
)


def _gold_variants(gold: str, options: list[str], rng: random.Random) -> str:
    if options and gold in "ABCDE":
        return rng.choice([gold, f"({gold})", f"\\text{{{gold}}}", f"{gold}.", f"Option {gold}", f"\\text{{({gold})}}"])
    g = gold.strip().strip("$")
    forms = [g, f"${g}$"]
    if g.lstrip("-").isdigit():
        n = int(g)
        forms += [f"{n:,}", f"{n} cm", f"{n}^\\circ", f"{n}.0", f"x = {n}"]
    if g.startswith("\\frac") and g.count("{") == 2:
        a, b = g[6:-1].split("}{")
        forms += [f"{a}/{b}", f"\\dfrac{{{a}}}{{{b}}}"]
        try:
            forms.append(f"{int(a) / int(b):.2f}")
        except ValueError:
            pass
    return rng.choice(forms)


def _wrong(gold: str, options: list[str], rng: random.Random) -> str:
    if options and gold in "ABCDE":
        return rng.choice([c for c in "ABCDE" if c != gold])
    if gold.strip().lstrip("-").isdigit():
        return str(int(gold) + rng.choice([-3, -1, 1, 2, 10]))
    return rng.choice(["x+1", "2\\sqrt{3}+1", "\\frac{7}{9}", "3.75", "(1, 2)", "\\pi - 1"])


def synthetic_response(row: dict, seed: int = 0) -> str:
    rng = random.Random(f"{seed}:{row['id']}")
    a, b = rng.randint(2, 30), rng.randint(2, 30)
    body = "".join(REASONING.format(a=a, b=b, ab=a * b, a2b2=a * a + b * b, deg=rng.choice([30, 45, 60])) for _ in range(4))
    gold, options = str(row["answer"]), row.get("options") or []
    kind = rng.random()
    if kind < 0.40:
        ans = _gold_variants(gold, options, rng)
    elif kind < 0.85:
        ans = _wrong(gold, options, rng)
    elif kind < 0.95:
        return "<think>" + body + "</think> So we need to continue the computation with the"
    else:
        return _gold_variants(gold, options, rng) if rng.random() < 0.5 else _wrong(gold, options, rng)
    template = rng.choice(
        [
            "<think>{body}</think> The answer is \\boxed{{{ans}}}.",
            "{body}\nTherefore, the answer is {ans}.",
            "{body}\n\nAnswer: {ans}",
            "{body}\n\n**Final Answer**\n\\[\n\\boxed{{{ans}}}\n\\]",
            "<think>{body}</think><answer>{ans}</answer>",
            "{body} So the correct option is {ans}.",
        ]
    )
    return template.format(body=body, ans=ans)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", default=str(ROOT.parent / "shared" / "benchmarks" / "mathvision_test.jsonl"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="score the file this many times (fresh caches each time)")
    args = p.parse_args(argv)
    bench = get("mathvision")
    if not Path(args.input).exists():
        print(f"{args.input} does not exist. Pass --input pointing at MathVision's test.jsonl.", file=sys.stderr)
        return 2
    rows = bench.load(args.input) * args.repeat
    responses = [synthetic_response(r, seed=i // 3040) for i, r in enumerate(rows)]
    print(f"{len(rows)} items, mean response {sum(map(len, responses)) / len(responses):.0f} chars")
    t = time.perf_counter()
    import math_verify  # noqa: F401  - a one-time start-up cost (sympy, antlr), not throughput

    print(f"start-up: importing math-verify took {time.perf_counter() - t:.2f} s (not counted below)")
    _time_protocols("mathvision", rows, responses, args.workers)
    gold = ROOT.parent / "shared" / "eval-gold" / "mathvista_dev.jsonl.gz"
    if gold.exists():
        with gzip.open(gold, "rt", encoding="utf-8") as f:
            vista = [json.loads(line) for line in f]
        print(f"\nmathvista: {len(vista)} real responses of 9 models, mean {sum(len(r['response'] or '') for r in vista) / len(vista):.0f} chars")
        _time_protocols("mathvista", vista, [r["response"] for r in vista], args.workers)
    else:
        print(f"{gold} is missing: MathVista's real responses not timed.")
    return 0


def _time_protocols(name: str, rows: list[dict], responses: list[str], workers: int) -> None:
    bench = get(name)
    for protocol in ("official", "strict"):
        for n in (1, workers):
            _clear_caches()
            t = time.perf_counter()
            verdicts = score_rows(bench, rows, responses, workers=n, protocol=protocol)
            dt = time.perf_counter() - t
            acc = sum(v.correct for v in verdicts) / len(verdicts)
            print(f"{name} protocol={protocol} workers={n}: {len(rows) / dt:,.0f} items/s ({dt:.2f} s, accuracy {acc:.3f})")


def _clear_caches() -> None:
    import job_runtime.eval.answers as answers
    import job_runtime.eval.benchmarks.latex_value as latex_value
    import job_runtime.eval.benchmarks.numbers as numbers

    for fn in (answers._math_verify, answers.math_equal, numbers.to_number, numbers.evaluate, latex_value.official_number):
        fn.cache_clear()


if __name__ == "__main__":
    sys.exit(main())
