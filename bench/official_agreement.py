"""Agreement with each benchmark's official verdicts on real model responses (../shared/eval-gold).

Rows: published models' responses to MathVista testmini (9 models x 1,000) and MATH-V test (8 x
3,040) with ``official_correct``, the verdict of the benchmark's own pipeline (MathVista: the
authors' stored GPT-4 extraction + normalisation; MATH-V: its rule-based evaluate.py, re-run).
Scorers: sftrl ``official`` and ``strict`` (`score_rows`, what ``python -m job_runtime score
--protocol`` runs) and math-verify alone (``verify(parse(gold), parse(response))``, the gold letter
or the gold option's text, timeouts off). Printed: agreement, false positives (official wrong,
scorer right) and negatives, per question type, per source model (accuracy gap in points), and for
MathVista a leave-one-model-out figure for the one setting chosen on the dev set (the string that
stands for "no answer", see job_runtime.eval.benchmarks.mathvista_official.NO_ANSWER).

    python bench/official_agreement.py [--limit N] [--no-math-verify]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from job_runtime.eval.benchmarks import mathvista_official  # noqa: E402
from job_runtime.eval.benchmarks.registry import get  # noqa: E402
from job_runtime.eval.benchmarks.scoring import score_rows  # noqa: E402

GOLD = ROOT.parent / "shared" / "eval-gold"
FILES = {"mathvista": "mathvista_dev.jsonl.gz", "mathvision": "mathvision_dev.jsonl.gz"}
NO_ANSWER_CANDIDATES = ("N/A", "None", "Cannot be determined", "Not provided", "")
LETTERS = "ABCDEFGHIJ"


def load(name: str, limit: int | None = None) -> list[dict]:
    with gzip.open(GOLD / FILES[name], "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return rows[:limit] if limit else rows


def qtype(name: str, row: dict) -> str:
    if name == "mathvista":
        return f"{row['question_type']}/{row['answer_type']}"
    return "multiple choice" if row.get("options") else "free form"


def gold_targets(name: str, row: dict) -> list[str]:
    if name == "mathvista":
        return [str(row["answer"])] + ([LETTERS[row["choices"].index(row["answer"])]] if row.get("choices") else [])
    opts = row.get("options") or []
    ans = str(row["answer"])
    return [ans] + ([str(opts[LETTERS.index(ans)])] if opts and ans in LETTERS[: len(opts)] else [])


def math_verify_alone(name: str, rows: list[dict]) -> list[bool]:
    from math_verify import parse, verify

    cache: dict[str, object] = {}
    out = []
    for r in rows:
        ok = False
        try:
            pred = parse(r["response"] or "", parsing_timeout=None)
            for t in gold_targets(name, r):
                if t not in cache:
                    cache[t] = parse(f"${t}$", parsing_timeout=None)
                if cache[t] and pred and verify(cache[t], pred, timeout_seconds=None):
                    ok = True
                    break
        except Exception:  # noqa: BLE001 - a crash is a "wrong" verdict
            ok = False
        out.append(ok)
    return out


def pct(k: int, n: int) -> str:
    return f"{100 * k / n:6.2f}%" if n else "     -"


def table(name: str, rows: list[dict], verdicts: dict[str, list[bool]], seconds: dict[str, float]) -> dict:
    truth = [bool(r["official_correct"]) for r in rows]
    names = list(verdicts)
    print(f"\n{name}: {len(rows)} real responses, {len({r['source_model'] for r in rows})} models; "
          f"% of verdicts agreeing with the official ones")
    print(f"  {'':<34}{'n':>6}" + "".join(f"{s:>16}" for s in names))
    agree = {s: sum(v == t for v, t in zip(verdicts[s], truth)) for s in names}
    print(f"  {'agreement':<34}{len(rows):>6}" + "".join(f"{pct(agree[s], len(rows)):>16}" for s in names))
    wrong = [i for i, t in enumerate(truth) if not t]
    right = [i for i, t in enumerate(truth) if t]
    fp = {s: sum(verdicts[s][i] for i in wrong) for s in names}
    fn = {s: sum(not verdicts[s][i] for i in right) for s in names}
    print(f"  {'false positives (official wrong)':<34}{len(wrong):>6}" + "".join(f"{fp[s]:>16}" for s in names))
    print(f"  {'false negatives (official right)':<34}{len(right):>6}" + "".join(f"{fn[s]:>16}" for s in names))
    print(f"  {'items/s (one process)':<34}{'':>6}" + "".join(
        f"{len(rows) / seconds[s]:>16,.0f}" if s in seconds else f"{'-':>16}" for s in names))
    print("  per question type")
    for q in sorted({qtype(name, r) for r in rows}):
        idx = [i for i, r in enumerate(rows) if qtype(name, r) == q]
        print(f"    {q:<32}{len(idx):>6}" + "".join(
            f"{pct(sum(verdicts[s][i] == truth[i] for i in idx), len(idx)):>16}" for s in names))
    print("  per source model: official accuracy, then each scorer's accuracy gap in points")
    gaps: dict[str, list[float]] = defaultdict(list)
    for m in sorted({r["source_model"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["source_model"] == m]
        off = 100 * sum(truth[i] for i in idx) / len(idx)
        cells = ""
        for s in names:
            g = 100 * sum(verdicts[s][i] for i in idx) / len(idx) - off
            gaps[s].append(abs(g))
            cells += f"{g:>+15.1f} "
        print(f"    {m[:26]:<26}{off:>6.1f}{len(idx):>6}" + cells)
    print(f"  {'mean |gap| (points)':<34}{'':>6}" + "".join(f"{sum(gaps[s]) / len(gaps[s]):>16.2f}" for s in names))
    print(f"  {'max |gap| (points)':<34}{'':>6}" + "".join(f"{max(gaps[s]):>16.2f}" for s in names))
    return {s: agree[s] / len(rows) for s in names}


def leave_one_model_out(rows: list[dict]) -> None:
    """MathVista's one dev-chosen setting, chosen without each model and measured on it."""
    bench = get("mathvista")
    hits: dict[str, dict[str, list[bool]]] = {}
    for cand in NO_ANSWER_CANDIDATES:
        mathvista_official.NO_ANSWER = cand
        vs = score_rows(bench, rows, [r["response"] for r in rows], protocol="official")
        hits[cand] = defaultdict(list)
        for r, v in zip(rows, vs):
            hits[cand][r["source_model"]].append(v.correct == bool(r["official_correct"]))
    mathvista_official.NO_ANSWER = "N/A"
    models = sorted({r["source_model"] for r in rows})
    held, chosen = 0, []
    for m in models:
        def train(c: str) -> int:
            return sum(sum(hits[c][o]) for o in models if o != m)
        best = max(NO_ANSWER_CANDIDATES, key=train)
        chosen.append(best)
        held += sum(hits[best][m])
    print(f"  leave-one-model-out (the no-answer string chosen on 8 models, measured on the 9th): "
          f"{pct(held, len(rows))} agreement; chosen: {', '.join(sorted(set(repr(c) for c in chosen)))}")
    print("  (every other MathVista rule was written by reading dev responses of all 9 models; see docs/eval.md)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="first N rows of each file (all by default)")
    p.add_argument("--no-math-verify", action="store_true", help="skip the slow math-verify column")
    args = p.parse_args(argv)
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    for name in FILES:
        if not (GOLD / FILES[name]).exists():
            print(f"{GOLD / FILES[name]} is missing: {name} skipped. Put the eval-gold file there to measure it.")
            continue
        rows = load(name, args.limit)
        bench = get(name)
        verdicts, seconds = {}, {}
        for protocol in ("official", "strict"):
            t = time.perf_counter()
            vs = score_rows(bench, rows, [r["response"] for r in rows], protocol=protocol)
            seconds[f"sftrl {protocol}"] = time.perf_counter() - t
            verdicts[f"sftrl {protocol}"] = [bool(v.correct) for v in vs]
        if not args.no_math_verify:
            import math_verify  # noqa: F401 - start-up cost kept out of the timing

            t = time.perf_counter()
            verdicts["math-verify"] = math_verify_alone(name, rows)
            seconds["math-verify"] = time.perf_counter() - t
        table(name, rows, verdicts, seconds)
        if name == "mathvista":
            leave_one_model_out(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
