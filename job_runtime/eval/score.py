"""`python -m job_runtime score BENCHMARK --input rows.jsonl --output scored.jsonl`: re-score saved
generations without a model (``sftrl eval score ...`` runs exactly this).

Input: JSON lines, each one of the benchmark's own rows (its official fields, as in the authors'
files or the Hugging Face copy) plus a ``response`` field. Output: the same rows, in the same
order, plus ``extracted`` and ``correct`` (bool) (and ``method``: which rule or the judge read the
answer, and ``protocol``). ``--protocol official`` (the default) reproduces the benchmark's own
pipeline; ``--protocol strict`` is sftrl's robust scorer. A malformed line (not JSON, no response, a missing official field) is reported on
stderr with its line number and left out; the rest is scored. The headline metric is printed on
stdout. Paths may be local or s3:// URIs.

Exit codes: 0 scored (even with malformed lines), 1 no line could be scored, 2 usage error
(unknown benchmark, unreadable input).

>>> import tempfile, pathlib, json
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "in.jsonl").write_text(json.dumps({"unique_id": "1", "problem": "1+1", "answer": "2", "response": "\\\\boxed{2}"}) + "\\nnot json\\n")
>>> main(["math500", "--input", str(d / "in.jsonl"), "--output", str(d / "out.jsonl")])  # doctest: +ELLIPSIS
math500: accuracy = 1.0000 (1/1 rows scored; 1 malformed line left out; protocol official)
0
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from job_runtime.io import storage
from job_runtime.eval.benchmarks.registry import UnknownBenchmark, get, names
from job_runtime.eval.benchmarks.base import PROTOCOLS
from job_runtime.eval.benchmarks.scoring import default_workers, result_entry, score_rows


def _read(uri: str) -> str:
    if "://" in uri:
        return storage.read_text(uri)
    with open(uri, encoding="utf-8") as f:
        return f.read()


def _write(uri: str, text: str) -> None:
    storage.write_text(uri if "://" in uri else storage.normalize(uri), text)


def parse_rows(text: str, bench) -> tuple[list[dict[str, Any]], list[str]]:
    """(valid rows, one message per malformed line)."""
    rows, problems = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"line {lineno}: not JSON ({e.msg} at column {e.colno}); left out. Fix the line to score it.")
            continue
        why = bench.validate(row)
        if why is None and not isinstance(row.get("response"), str):
            why = "it has no 'response' string"
        if why is not None:
            problems.append(f"line {lineno}: not scored, because {why}. Add the field to score it.")
            continue
        rows.append(row)
    return rows, problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m job_runtime score", description="Re-score saved generations of one benchmark without a model."
    )
    p.add_argument("benchmark", help=f"one of: {', '.join(names())}")
    p.add_argument("--input", required=True, help="JSON lines: the benchmark's rows plus a 'response' field")
    p.add_argument("--output", required=True, help="JSON lines: the same rows plus 'extracted' and 'correct'")
    p.add_argument("--protocol", choices=PROTOCOLS, default="official",
                   help="'official': the benchmark's own pipeline (default); 'strict': sftrl's robust scorer")
    p.add_argument("--workers", type=int, default=None, help="scoring processes (default: the usable CPUs, at most 8)")
    p.add_argument("--judge", default=None, help="OpenAI-compatible endpoint for answers the rules cannot find (URL[#model])")
    p.add_argument("--breakdown", action="store_true", help="also print the breakdown as JSON")
    args = p.parse_args(argv)
    try:
        bench = get(args.benchmark)
    except UnknownBenchmark as e:
        print(str(e), file=sys.stderr)
        return 2
    out_uri = args.output if "://" in args.output else storage.normalize(args.output)
    why = storage.unwritable_reason(out_uri, folder=False)  # checked before any scoring work is done
    if why:
        print(f"--output {args.output}: {why}. Choose a writable path.", file=sys.stderr)
        return 2
    try:
        text = _read(args.input)
    except (OSError, storage.StorageError) as e:
        print(f"cannot read {args.input}, because {e}. Check the path.", file=sys.stderr)
        return 2
    rows, problems = parse_rows(text, bench)
    for msg in problems:
        print(f"{args.input} {msg}", file=sys.stderr)
    if not rows:
        print(f"{args.input}: no row could be scored ({len(problems)} malformed). Give {bench.name} rows with a response.",
              file=sys.stderr)
        return 1
    responses = [r["response"] for r in rows]
    verdicts = score_rows(bench, rows, responses, workers=args.workers or default_workers(), protocol=args.protocol)
    scorer = None
    if args.judge:
        from job_runtime.eval.benchmarks.judge import Judge

        judge = Judge(args.judge)
        verdicts = judge.rescue(bench, rows, responses, verdicts, args.protocol)
        scorer = judge.describe()
    out = [json.dumps({**r, "extracted": v.extracted, "correct": bool(v.correct), "method": v.method,
                       "protocol": args.protocol}, ensure_ascii=False)
           for r, v in zip(rows, verdicts)]
    try:
        _write(args.output, "\n".join(out) + "\n")
    except (OSError, storage.StorageError) as e:
        print(f"cannot write --output {args.output}, because {e}. Choose a writable path.", file=sys.stderr)
        return 2
    entry = result_entry(bench, rows, verdicts, scorer, args.protocol)
    correct = sum(v.correct for v in verdicts)
    left = f"; {len(problems)} malformed line{'s' if len(problems) != 1 else ''} left out" if problems else ""
    print(f"{bench.name}: {entry['metric']} = {entry['score']:.4f} ({correct}/{len(rows)} rows scored{left}; "
          f"protocol {args.protocol})")
    if args.breakdown:
        print(json.dumps(entry["breakdown"], indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
