"""Agreement with each benchmark's official verdicts on real model responses (../shared/eval-gold).

Rows: published models' responses to MathVista testmini (9 models x 1,000) and MATH-V test (8 x
3,040) with ``official_correct``, the verdict of the benchmark's own pipeline (MathVista: the
authors' stored GPT-4 extraction + normalisation; MATH-V: its rule-based evaluate.py, re-run).

Scorers, in the same run: sftrl ``official`` and ``strict`` (`score_rows`, what ``python -m
job_runtime score --protocol`` runs); math-verify alone (``verify(parse(gold), parse(response))``,
timeouts off); MathRuler, EasyR1's grader (its reward: ``grade_answer(extract_boxed_content(response),
gold)``, hiyouga/EasyR1 examples/reward_function/math.py). For multiple choice the two libraries get
credit for the gold letter or the gold option's text, whichever they match.

Printed per benchmark: agreement, false positives (official wrong, scorer right) and negatives,
items/s, per question type, per source model (accuracy gap in points). For MathVista also:

- each rule of the stand-in for GPT-4 (job_runtime.eval.benchmarks.mathvista_reading.RULES): the
  agreements it adds on every source model (the verdicts that change when it alone is switched off),
  so a rule suggested by one model's responses shows whether it helps the others;
- leave one model out: for each model, the rules are chosen on the other eight and the official
  protocol with those rules is measured on the ninth; strictly (a rule is kept only when it adds
  agreements on the other eight: a rule only one model's responses exercise is then dropped) and
  leniently (kept unless it costs agreements there);
- the noise in the official verdicts: disagreements the response cannot explain (the stored GPT-4
  extraction contradicts a one-line explicit answer, or credits an answer the response never
  gives), with pids.

    python bench/official_agreement.py [--limit N] [--no-math-verify] [--no-mathruler] [--only mathvista]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from job_runtime.eval.benchmarks import mathvista_choices, mathvista_official, mathvista_reading  # noqa: E402
from job_runtime.eval.benchmarks.registry import get  # noqa: E402
from job_runtime.eval.benchmarks.scoring import score_rows  # noqa: E402

GOLD = ROOT.parent / "shared" / "eval-gold"
FILES = {"mathvista": "mathvista_dev.jsonl.gz", "mathvision": "mathvision_dev.jsonl.gz"}
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


def mathruler_alone(name: str, rows: list[dict]) -> list[bool]:
    """EasyR1's accuracy reward: the last box graded by MathRuler against the gold (letter or option text)."""
    from mathruler.grader import extract_boxed_content, grade_answer

    out = []
    for r in rows:
        ok = False
        try:
            boxed = extract_boxed_content(r["response"] or "")
            ok = any(grade_answer(boxed, t) for t in gold_targets(name, r))
        except Exception:  # noqa: BLE001 - a crash is a "wrong" verdict
            ok = False
        out.append(ok)
    return out


def pct(k: int, n: int) -> str:
    return f"{100 * k / n:6.2f}%" if n else "     -"


def gaps_by_model(rows: list[dict], verdicts: list[bool]) -> dict[str, float]:
    """Scorer accuracy minus official accuracy, in points, per source model."""
    by: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r, v in zip(rows, verdicts):
        c = by[r["source_model"]]
        c[0] += v
        c[1] += bool(r["official_correct"])
        c[2] += 1
    return {m: 100 * (a - o) / n for m, (a, o, n) in sorted(by.items())}


def table(name: str, rows: list[dict], verdicts: dict[str, list[bool]], seconds: dict[str, float]) -> None:
    truth = [bool(r["official_correct"]) for r in rows]
    names = list(verdicts)
    print(f"\n{name}: {len(rows)} real responses, {len({r['source_model'] for r in rows})} models; "
          f"% of verdicts agreeing with the official ones")
    print(f"  {'':<34}{'n':>6}" + "".join(f"{s:>15}" for s in names))
    agree = {s: sum(v == t for v, t in zip(verdicts[s], truth)) for s in names}
    print(f"  {'agreement':<34}{len(rows):>6}" + "".join(f"{pct(agree[s], len(rows)):>15}" for s in names))
    wrong = [i for i, t in enumerate(truth) if not t]
    right = [i for i, t in enumerate(truth) if t]
    fp = {s: sum(verdicts[s][i] for i in wrong) for s in names}
    fn = {s: sum(not verdicts[s][i] for i in right) for s in names}
    print(f"  {'false positives (official wrong)':<34}{len(wrong):>6}" + "".join(f"{fp[s]:>15}" for s in names))
    print(f"  {'false negatives (official right)':<34}{len(right):>6}" + "".join(f"{fn[s]:>15}" for s in names))
    print(f"  {'items/s (one process)':<34}{'':>6}" + "".join(
        f"{len(rows) / seconds[s]:>15,.0f}" if s in seconds else f"{'-':>15}" for s in names))
    print("  per question type")
    for q in sorted({qtype(name, r) for r in rows}):
        idx = [i for i, r in enumerate(rows) if qtype(name, r) == q]
        print(f"    {q:<32}{len(idx):>6}" + "".join(
            f"{pct(sum(verdicts[s][i] == truth[i] for i in idx), len(idx)):>15}" for s in names))
    print("  per source model: official accuracy, then each scorer's accuracy gap in points")
    gaps = {s: gaps_by_model(rows, verdicts[s]) for s in names}
    for m in gaps[names[0]]:
        idx = [i for i, r in enumerate(rows) if r["source_model"] == m]
        off = 100 * sum(truth[i] for i in idx) / len(idx)
        print(f"    {m[:26]:<26}{off:>6.1f}{len(idx):>6}" + "".join(f"{gaps[s][m]:>+15.1f}" for s in names))
    print(f"  {'mean |gap| (points)':<34}{'':>6}" + "".join(
        f"{sum(map(abs, gaps[s].values())) / len(gaps[s]):>15.2f}" for s in names))
    print(f"  {'max |gap| (points)':<34}{'':>6}" + "".join(f"{max(map(abs, gaps[s].values())):>15.2f}" for s in names))


# --- MathVista: what each rule adds, leave one model out, noise ---------------------------------------


def _official(rows: list[dict], off: set[str]) -> list[bool]:
    saved = set(mathvista_reading.OFF)
    mathvista_reading.OFF.clear()
    mathvista_reading.OFF.update(off)
    try:
        return [v.correct for v in score_rows(get("mathvista"), rows, [r["response"] for r in rows])]
    finally:
        mathvista_reading.OFF.clear()
        mathvista_reading.OFF.update(saved)


def _agree_by_model(rows: list[dict], verdicts: list[bool]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r, v in zip(rows, verdicts):
        out[r["source_model"]] += v == bool(r["official_correct"])
    return out


def rules_and_leave_one_model_out(rows: list[dict]) -> None:
    models = sorted({r["source_model"] for r in rows})
    full = _agree_by_model(rows, _official(rows, set()))
    adds: dict[str, dict[str, int]] = {}
    for name in mathvista_reading.RULES:
        without = _agree_by_model(rows, _official(rows, {name}))
        adds[name] = {m: full[m] - without[m] for m in models}
    short = [m.split("_")[0][:7] for m in models]
    print("\n  MathVista stand-in rules: agreements each adds per source model (its verdicts switched off alone)")
    print(f"    {'rule':<20}" + "".join(f"{s:>8}" for s in short) + f"{'total':>7}{'models +/-':>12}")
    for name, by in adds.items():
        plus, minus = sum(v > 0 for v in by.values()), sum(v < 0 for v in by.values())
        print(f"    {name:<20}" + "".join(f"{by[m]:>+8d}" for m in models) + f"{sum(by.values()):>+7d}{plus:>8d}/{minus}")
    for label, keep in (("a rule is kept when it adds agreements on the other 8", lambda net: net > 0),
                        ("a rule is kept unless it costs agreements on the other 8", lambda net: net >= 0)):
        held_agree, held_gaps, dropped = 0, [], defaultdict(list)
        for m in models:
            off = {name for name, by in adds.items() if not keep(sum(v for o, v in by.items() if o != m))}
            for name in off:
                dropped[name].append(m.split("_")[0])
            mine = [r for r in rows if r["source_model"] == m]
            vs = _official(mine, off)
            held_agree += sum(v == bool(r["official_correct"]) for v, r in zip(vs, mine))
            held_gaps.append(abs(gaps_by_model(mine, vs)[m]))
        print(f"  leave one model out ({label}, measured on the 9th): {pct(held_agree, len(rows))} agreement, "
              f"mean |gap| {sum(held_gaps) / len(held_gaps):.2f} points")
        if dropped:
            print("    dropped: " + "; ".join(f"{n} (leaving out {', '.join(ms)})" for n, ms in dropped.items()))


_SHORT_ANSWER = re.compile(r"^\s*(?:the (?:correct )?answer is:?\s*|the correct option(?: letter)? is:?\s*)?"
                           r"\(?([A-J])\)?(?:[.):,]\s*(.*?))?\.?\s*$", re.IGNORECASE)


def _flat(text: str) -> str:
    return re.sub(r"[\s{}$]", "", str(text).lower().replace("\\sqrt", "√"))


def noise(row: dict, ours: bool) -> str | None:
    """Why an official verdict cannot follow from the response, or None (see the module doc)."""
    if ours == bool(row["official_correct"]):
        return None
    resp, choices, gold = row["response"] or "", [str(c) for c in row.get("choices") or []], str(row["answer"])
    pred = row.get("official_prediction")
    if choices:
        m = _SHORT_ANSWER.match(resp.strip()) if "\n" not in resp.strip() and len(resp.strip()) <= 80 else None
        if m and m.group(1).upper() in LETTERS[: len(choices)]:
            i = LETTERS.index(m.group(1).upper())
            rest = (m.group(2) or "").strip()
            named = mathvista_choices.option_at(rest, choices) if rest else None
            if named in (None, i) and pred != choices[i]:
                return "the GPT-4 extraction contradicts a one-line explicit answer"
        if row["official_correct"] and sorted(c.lower() for c in choices) != ["no", "yes"]:
            letter = LETTERS[choices.index(gold)]
            if _flat(gold) not in _flat(resp) and not re.search(rf"\(\s*{letter}\s*\)|\b{letter}\b[.):]", resp):
                return "the official verdict credits an answer the response never gives"
        return None
    if row["official_correct"] and not re.search(rf"(?<![\d.]){re.escape(gold)}(?![\d])", resp.replace(",", "")):
        return "the official verdict credits an answer the response never gives"
    return None


def noise_census(rows: list[dict], ours: list[bool]) -> None:
    found: dict[str, list[dict]] = defaultdict(list)
    for r, v in zip(rows, ours):
        why = noise(r, v)
        if why:
            found[why].append(r)
    total = sum(ours_v != bool(r["official_correct"]) for r, ours_v in zip(rows, ours))
    n = sum(map(len, found.values()))
    print(f"\n  noise in the official verdicts: {n} of the {total} disagreements ({pct(n, len(rows))} of all rows) "
          f"cannot follow from the response")
    for why, rs in found.items():
        print(f"    {len(rs):>4}  {why}: " + ", ".join(f"{r['pid']} ({r['source_model']})" for r in rs))
    print(f"  agreement on the rows that are not noise: "
          f"{pct(sum(v == bool(r['official_correct']) for r, v in zip(rows, ours) if not noise(r, v)), len(rows) - n)}")
    unanswered = [r for r, v in zip(rows, ours) if v != bool(r["official_correct"]) and not noise(r, v)
                  and mathvista_official.extract(r, r["response"]) in mathvista_reading.NO_ANSWERS]
    print(f"  of the rest, {len(unanswered)} are responses that give no answer, whose verdict GPT-4's pick among "
          f"no-answer strings decides (N/A, 'Cannot be determined', a guessed letter; the nearest-option rule maps each "
          f"differently): " + ", ".join(f"{r['pid']} ({r['source_model']})" for r in unanswered[:12]) + ", ...")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="first N rows of each file (all by default)")
    p.add_argument("--no-math-verify", action="store_true", help="skip the slow math-verify column")
    p.add_argument("--no-mathruler", action="store_true", help="skip the MathRuler column")
    p.add_argument("--only", choices=sorted(FILES), default=None, help="one benchmark")
    args = p.parse_args(argv)
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    for name in FILES:
        if args.only and name != args.only:
            continue
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
        for label, skip, fn in (("math-verify", args.no_math_verify, math_verify_alone),
                                ("MathRuler", args.no_mathruler, mathruler_alone)):
            if skip:
                continue
            fn(name, rows[:1])  # import and first-call cost kept out of the timing
            t = time.perf_counter()
            verdicts[label] = fn(name, rows)
            seconds[label] = time.perf_counter() - t
        table(name, rows, verdicts, seconds)
        if name == "mathvista":
            rules_and_leave_one_model_out(rows)
            noise_census(rows, verdicts["sftrl official"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
