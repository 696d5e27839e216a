"""`python -m job_runtime score BENCHMARK --input rows.jsonl --output scored.jsonl` on real rows."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from job_runtime.eval.score import main
from tests.conftest import ROOT, require_shared


def _mathvision_rows(n: int) -> list[dict]:
    path = require_shared("benchmarks", "mathvision_testmini.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()[:n]]


def test_scores_rows_in_order_with_extracted_and_correct(tmp_path, capsys):
    rows = _mathvision_rows(6)
    for i, r in enumerate(rows):
        r["response"] = f"<think>...</think> \\boxed{{{r['answer']}}}" if i % 2 == 0 else "The answer is 123456."
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["mathvision_testmini", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")]) == 0
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["id"] for o in out] == [r["id"] for r in rows]
    assert all({k: o[k] for k in r} == r for o, r in zip(out, rows))  # the official fields pass through unchanged
    assert [o["correct"] for o in out] == [True, False] * 3
    assert out[1]["extracted"] == "123456" and isinstance(out[0]["correct"], bool)
    printed = capsys.readouterr().out
    assert "mathvision_testmini: accuracy = 0.5000 (3/6 rows scored; protocol official)" in printed


def test_malformed_lines_are_reported_with_line_numbers(tmp_path, capsys):
    rows = _mathvision_rows(3)
    rows[0]["response"] = "\\boxed{" + rows[0]["answer"] + "}"
    rows[2]["response"] = "\\boxed{" + rows[2]["answer"] + "}"
    del rows[2]["answer"]
    lines = [json.dumps(rows[0]), "{not json", json.dumps(rows[1]), json.dumps(rows[2])]  # rows[1] has no response
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["mathvision_testmini", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")]) == 0
    err = capsys.readouterr()
    assert "line 2: not JSON" in err.err
    assert "line 3: not scored, because it has no 'response' string" in err.err
    assert "line 4: not scored, because it has no 'answer' field" in err.err
    assert "(1/1 rows scored; 3 malformed lines left out; protocol official)" in err.out
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 1


def test_unknown_benchmark_exit_2_lists_known(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text("{}\n")
    assert main(["mathvistaa", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "mathvistaa" in err and "mathvista" in err and "wemath" in err and "Traceback" not in err


def test_unreadable_input_exit_2_and_nothing_scored_exit_1(tmp_path, capsys):
    assert main(["math500", "--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o.jsonl")]) == 2
    (tmp_path / "bad.jsonl").write_text("nope\n")
    assert main(["math500", "--input", str(tmp_path / "bad.jsonl"), "--output", str(tmp_path / "o.jsonl")]) == 1
    assert "no row could be scored" in capsys.readouterr().err


def test_wemath_headline_is_the_strict_score(tmp_path, capsys):
    path = require_shared("benchmarks", "wemath_testmini.json")
    rows = [r for r in json.loads(path.read_text()) if r["ID"] in ("2steps_1", "2steps_2")]
    for r in rows:
        r["response"] = f"<Answer>: <<{r['answer']}>>"
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["wemath", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl"), "--breakdown"]) == 0
    out = capsys.readouterr().out
    assert "wemath: score_strict = 1.0000 (6/6 rows scored; protocol official)" in out and '"CM_strict": 2' in out


@pytest.mark.parametrize("workers", ["1", "2"])
def test_module_entry_point_and_s3(tmp_path, s3_bucket, workers):
    """The exact command `sftrl eval score` execs, reading and writing s3:// (a real moto server)."""
    import os

    from job_runtime.io import storage

    rows = _mathvision_rows(304) if workers == "2" else _mathvision_rows(5)
    for r in rows:
        r["response"] = f"Answer: {r['answer']}"
    storage.write_text(f"{s3_bucket}/in.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run(
        [sys.executable, "-m", "job_runtime", "score", "mathvision_testmini", "--input", f"{s3_bucket}/in.jsonl",
         "--output", f"{s3_bucket}/out.jsonl", "--workers", workers, "--protocol", "strict"],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    # "Answer: X" is read by the strict protocol only: MATH-V's own rules need a box or "the answer is"
    assert "mathvision_testmini: accuracy = 1.0000" in proc.stdout and "protocol strict" in proc.stdout
    assert len(storage.read_text(f"{s3_bucket}/out.jsonl").splitlines()) == len(rows)


def test_doctests():
    import doctest

    import job_runtime.eval.score

    assert doctest.testmod(job_runtime.eval.score).failed == 0


def test_sftrl_eval_score_is_the_same_command(tmp_path):
    """`sftrl eval score` (the controller CLI) execs `python -m job_runtime score` unchanged."""
    rows = _mathvision_rows(4)
    for r in rows:
        r["response"] = f"So the final answer is \\boxed{{{r['answer']}}}."
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sftrl = ROOT / ".venv" / "bin" / "sftrl"
    cmd = [str(sftrl)] if sftrl.exists() else [sys.executable, "-m", "controller.cli"]
    r = subprocess.run([*cmd, "eval", "score", "mathvision_testmini", "--input", str(tmp_path / "in.jsonl"),
                        "--output", str(tmp_path / "out.jsonl")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "accuracy = 1.0000 (4/4 rows scored; protocol official)" in r.stdout
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["id"] for o in out] == [x["id"] for x in rows] and all(o["correct"] is True for o in out)
