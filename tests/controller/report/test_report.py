"""`sftrl report` end to end on a storage fixture with known samples.

Every number in the written CSVs is recomputed here from the items the fixture wrote: accuracy,
intervals (scipy's Wilson, Jeffreys draws with the same seed, and a normal approximation), seed mean/std/min/max, best marks,
deltas from base, and McNemar p-values against scipy.stats.binomtest.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import binomtest

from controller.report.load import (
    ReportError,
    build_report,
    load_experiment,
    main_table_text,
    report_command,
    resolve_experiment,
    summary_text,
)
from job_runtime.io import storage
from tests.conftest import require_tool

BENCH = {"mathvista": 200, "wemath": 150, "gpqa": 100, "math500": 120}
MM = ["mathvista", "wemath"]
RATES = {"base": 0.3, "sft": 0.45, "grpo": 0.5, "dapo": 0.47, "sft+grpo": 0.55}
DECEPTIVE_STEPS = (60, 65, 70, 75)


@dataclass
class Study:
    root: Path
    name: str
    runs: dict[str, dict] = field(default_factory=dict)  # run -> plan row
    items: dict[str, dict[str, dict[str, bool]]] = field(default_factory=dict)  # completed run -> bench -> id -> correct
    pending: set[str] = field(default_factory=set)  # runs whose eval is not complete

    @property
    def uri(self) -> str:
        return storage.normalize(self.root)

    def run_of(self, model, method, data, scale, seed):
        for name, r in self.runs.items():
            if (r["model"], r["method"], r["data"], r["scale"], r["seed"]) == (model, method, data, scale, seed):
                return name
        return None


def _write_eval(root: Path, sid: str, items: dict[str, dict[str, bool]], complete: bool, extra_lines: tuple[str, ...] = ()) -> None:
    d = root / "stages" / sid
    d.mkdir(parents=True, exist_ok=True)
    results = {
        b: {"score": sum(v.values()) / len(v), "metric": "accuracy", "n": len(v), "breakdown": {}, "scorer": {"name": "test", "version": "1"}}
        for b, v in items.items()
    }
    (d / "results.json").write_text(json.dumps({"benchmarks": results}))
    lines = [json.dumps({"benchmark": b, "id": i, "correct": c, "extracted": "x", "response": "r", "prompt": "p"}) for b, v in items.items() for i, c in v.items()]
    (d / "samples.jsonl").write_text("\n".join(lines + list(extra_lines)) + "\n")
    if complete:
        storage.publish(d, storage.normalize(d))


def _write_rl(root: Path, sid: str, complete: bool) -> None:
    d = root / "stages" / sid
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for step in range(0, 105, 5):
        row = {"step": step, "time": 1000.0 + step, "loss": 0.1, "reward": 0.2 + 0.006 * step,
               "frac_reward_zero_std": 0.5 - step / 400, "signal_availability": 0.5 + step / 400,
               "deceptive_reward": int(step in DECEPTIVE_STEPS)}
        if step % 10 == 0:
            row["heldout_accuracy"] = 0.3 + 0.004 * min(step, 50) - 0.003 * max(0, step - 50)
        rows.append(json.dumps(row))
    torn = [] if complete else ['{"step": 105, "rew']
    (d / "metrics.jsonl").write_text("\n".join(rows + torn) + "\n")
    (d / "stage.json").write_text("{}")
    if complete:
        storage.publish(d, storage.normalize(d))


def make_study(root: Path, name: str = "demo") -> Study:
    """Two models; tiny-a: base, sft/grpo/dapo/sft+grpo at scales 100 and 1000 (seeds 0-2 for sft and
    grpo at 1000, grpo seed 2 pending), an 'ext' data sft run; tiny-b: base, an sft run whose eval
    lacks _SUCCESS, a grpo run whose RL stage is still running."""
    st = Study(root, name)
    rng = np.random.default_rng(1234)
    stages: dict[str, dict] = {}

    def rand_items(rate: float) -> dict[str, dict[str, bool]]:
        return {b: {f"{b}-{i}": bool(rng.random() < rate) for i in range(n)} for b, n in BENCH.items()}

    def add(model, method, data=None, scale=None, seed=None, items=None, eval_state="done", rl_state="done"):
        run = "-".join(str(x) for x in (model, method.replace("+", "-"), data, scale, seed) if x is not None)
        train = []
        if "sft" in method:
            sid = f"sft-{model}-{data}-{scale}-{seed}"
            stages[sid] = {"kind": "sft", "parents": [], "labels": {}}
            train.append(sid)
            (root / "stages" / sid).mkdir(parents=True, exist_ok=True)
            (root / "stages" / sid / "metrics.jsonl").write_text('{"step": 1, "time": 1.0, "loss": 2.0}\n')
            storage.publish(root / "stages" / sid, storage.normalize(root / "stages" / sid))
        rl = method.split("+")[-1]
        if rl in ("grpo", "dapo"):
            sid = f"rl-{run}"
            stages[sid] = {"kind": "rl", "parents": list(train), "labels": {}}
            train.append(sid)
            if rl_state != "waiting":
                _write_rl(root, sid, complete=rl_state == "done")
        ev = f"eval-{run}"
        stages[ev] = {"kind": "eval", "parents": train[-1:], "labels": {}}
        st.runs[run] = {"run": run, "model": model, "method": method, "data": data, "scale": scale, "seed": seed, "train": train, "eval": ev}
        items = items if items is not None else rand_items(RATES[method] + (0.05 if (scale or 0) >= 1000 else 0))
        if eval_state == "done":
            st.items[run] = items
        else:
            st.pending.add(run)
        if eval_state != "waiting":
            _write_eval(root, ev, items, complete=eval_state == "done")
        return run, items

    add("tiny-a", "base")
    for scale in (100, 1000):
        _, sft = add("tiny-a", "sft", "distill", scale, 0)
        if scale == 100:  # grpo clearly better on mathvista (40 wrong->right), dapo not (2 flips)
            wrong = [i for i, c in sft["mathvista"].items() if not c]
            grpo = {**rand_items(0.5), "mathvista": {i: c or i in wrong[:40] for i, c in sft["mathvista"].items()}}
            dapo = {**rand_items(0.47), "mathvista": {i: c or i in wrong[:2] for i, c in sft["mathvista"].items()}}
            add("tiny-a", "grpo", "distill", scale, 0, items=grpo)
            add("tiny-a", "dapo", "distill", scale, 0, items=dapo)
        else:
            add("tiny-a", "grpo", "distill", scale, 0)
            add("tiny-a", "dapo", "distill", scale, 0)
        add("tiny-a", "sft+grpo", "distill", scale, 0)
    for seed in (1, 2):
        add("tiny-a", "sft", "distill", 1000, seed)
        add("tiny-a", "grpo", "distill", 1000, seed, eval_state="waiting" if seed == 2 else "done")
    add("tiny-a", "sft", "ext", 1000, 0)
    add("tiny-b", "base")
    add("tiny-b", "sft", "distill", 100, 0, items={b: {f"{b}-{i}": True for i in range(n)} for b, n in BENCH.items()}, eval_state="started")
    add("tiny-b", "grpo", "distill", 100, 0, eval_state="waiting", rl_state="started")
    # one malformed row and one duplicate id (with the opposite answer) in a finished eval
    ev = root / "stages" / st.runs["tiny-a-dapo-distill-1000-0"]["eval"] / "samples.jsonl"
    first = json.loads(ev.read_text().splitlines()[0])
    ev.write_text(ev.read_text() + '{"benchmark": "gpqa"}\n' + json.dumps({**first, "correct": not first["correct"]}) + "\n")
    storage.publish(ev.parent, storage.normalize(ev.parent))
    rl = root / "stages" / st.runs["tiny-a-grpo-distill-100-0"]["train"][-1]  # a bad middle row in a finished stage
    lines = (rl / "metrics.jsonl").read_text().splitlines()
    (rl / "metrics.jsonl").write_text("\n".join(lines[:3] + ["not json", '{"time": 1.0}'] + lines[3:]) + "\n")
    storage.publish(rl, storage.normalize(rl))
    plan = {"experiment": name, "storage": st.uri, "stages": stages, "runs": list(st.runs.values()), "benchmarks": list(BENCH)}
    (root / "experiments" / name).mkdir(parents=True)
    (root / "experiments" / name / "plan.json").write_text(json.dumps(plan))
    return st


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Study, object]:
    st = make_study(tmp_path_factory.mktemp("report") / "runs")
    return st, build_report(st.uri, st.name)


def read_csv(res, name: str) -> list[dict[str, str]]:
    with open(storage.local_path(storage.join(res.out, name))) as f:
        return list(csv.DictReader(f))


def fnum(s: str) -> float | None:
    return None if s == "" else float(s)


# --- independent recomputation ----------------------------------------------------------------


def acc(items: dict[str, bool]) -> float:
    return sum(items.values()) / len(items)


def run_score(st: Study, run: str, col: str) -> float:
    if col == "mm_avg":
        return float(np.mean([acc(st.items[run][b]) for b in MM]))
    return acc(st.items[run][col])


def boot_same_seed(counts: list[tuple[int, int]], seed: int = 0, b: int = 2000) -> tuple[float, float]:
    """One benchmark: scipy's Wilson interval; an average: Jeffreys draws with the report's seed."""
    if len(counts) == 1:
        ci = binomtest(counts[0][0], counts[0][1]).proportion_ci(method="wilson")
        return ci.low, ci.high
    rng = np.random.default_rng(seed)
    sims = np.mean([rng.beta(k + 0.5, n - k + 0.5, size=b) for k, n in counts], axis=0)
    return tuple(np.quantile(sims, [0.025, 0.975]))  # type: ignore[return-value]


def normal_ci(counts: list[tuple[int, int]]) -> tuple[float, float]:
    p = np.mean([k / n for k, n in counts])
    se = math.sqrt(sum((k / n) * (1 - k / n) / n for k, n in counts)) / len(counts)
    return p - 1.96 * se, p + 1.96 * se


def test_main_table_every_number_recomputed(study):
    st, res = study
    rows = read_csv(res, "main.csv")
    assert {r["column"] for r in rows} == {"mathvista", "wemath", "mm_avg"}
    checked_ci = checked_seeds = 0
    for r in rows:
        runs = r["runs"].split()
        done = [x for x in runs if x in st.items]
        col = r["column"]
        assert int(r["n_expected"]) == len(runs)
        if not done:
            assert r["status"] == "pending" and r["mean"] == "", r
            continue
        assert r["status"] == "ok"
        scores = [run_score(st, x, col) for x in done]
        if len(done) == 1:
            assert float(r["mean"]) == pytest.approx(scores[0], abs=1e-12)
            benches = MM if col == "mm_avg" else [col]
            counts = [(sum(st.items[done[0]][b].values()), len(st.items[done[0]][b])) for b in benches]
            lo, hi = float(r["ci_lo"]), float(r["ci_hi"])
            assert (lo, hi) == pytest.approx(boot_same_seed(counts), abs=1e-12)
            nlo, nhi = normal_ci(counts)
            assert abs(lo - nlo) < 0.025 and abs(hi - nhi) < 0.025, (r, nlo, nhi)
            assert lo <= float(r["mean"]) <= hi
            checked_ci += 1
        else:
            assert float(r["mean"]) == pytest.approx(np.mean(scores), abs=1e-12)
            assert float(r["std"]) == pytest.approx(np.std(scores, ddof=1), abs=1e-12)
            assert (float(r["min"]), float(r["max"])) == pytest.approx((min(scores), max(scores)), abs=1e-12)
            assert r["ci_lo"] == ""  # several seeds: spread across seeds, not an item interval
            checked_seeds += 1
        assert int(r["n_seeds"]) == len(done)
    assert checked_ci >= 20 and checked_seeds == 6  # sft@1000 (3 seeds), grpo@1000 (2 of 3) x 3 columns


def test_best_per_model_and_column(study):
    st, res = study
    rows = read_csv(res, "main.csv") + read_csv(res, "transfer.csv")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["status"] == "ok":
            groups.setdefault((r["model"], r["column"]), []).append(r)
    for (model, col), rs in groups.items():
        top = max(float(r["mean"]) for r in rs)
        assert [r["best"] == "1" for r in rs] == [float(r["mean"]) == top and len(rs) > 1 for r in rs], (model, col)
    md = (Path(storage.local_path(res.out)) / "report.md").read_text()
    assert md.count("**") >= 2 * 5  # bold best cells in the Markdown


def test_transfer_delta_from_base(study):
    st, res = study
    rows = read_csv(res, "transfer.csv")
    assert {r["column"] for r in rows} == {"gpqa", "math500"}
    base = {(r["model"], r["column"]): float(r["mean"]) for r in rows if r["method"] == "base" and r["status"] == "ok"}
    n = 0
    for r in rows:
        if r["method"] != "base" and r["status"] == "ok":
            assert float(r["delta_vs_base"]) == pytest.approx(float(r["mean"]) - base[(r["model"], r["column"])], abs=1e-12)
            n += 1
        elif r["method"] == "base":
            assert r["delta_vs_base"] == ""
    assert n >= 10


def test_pairs_mcnemar_matches_scipy(study):
    st, res = study
    rows = read_csv(res, "pairs.csv")
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) >= 15
    for r in ok:
        key = (r["model"], r["data"] or None, int(r["scale"]), int(r["seed"]))
        ia, ib = (st.items[st.run_of(key[0], m, key[1], key[2], key[3])] for m in (r["a"], r["b"]))
        benches = MM if r["benchmark"] == "mm_pooled" else [r["benchmark"]]
        pa = [ia[b][i] for b in benches for i in sorted(ia[b])]
        pb = [ib[b][i] for b in benches for i in sorted(ia[b])]
        a_only = sum(x and not y for x, y in zip(pa, pb))
        b_only = sum(y and not x for x, y in zip(pa, pb))
        assert (int(r["a_only"]), int(r["b_only"]), int(r["n_items"])) == (a_only, b_only, len(pa))
        p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
        assert float(r["p_mcnemar"]) == pytest.approx(p, rel=1e-9, abs=1e-300)
        assert float(r["diff"]) == pytest.approx(np.mean(pa) - np.mean(pb), abs=1e-12)
        assert float(r["diff_lo"]) <= float(r["diff"]) <= float(r["diff_hi"])
        if p < 0.05:
            winner, loser = (r["a"], r["b"]) if a_only > b_only else (r["b"], r["a"])
            assert r["verdict"] == f"{winner} beats {loser}"
        else:
            assert r["verdict"] == "no significant difference"
        assert float(r["p_holm"]) >= float(r["p_mcnemar"])
    pick = lambda a, b, bench: next(r for r in rows if (r["model"], r["scale"], r["a"], r["b"], r["benchmark"]) == ("tiny-a", "100", a, b, bench))  # noqa: E731
    assert pick("sft", "grpo", "mathvista")["verdict"] == "grpo beats sft"
    assert float(pick("sft", "grpo", "mathvista")["p_mcnemar"]) == pytest.approx(binomtest(0, 40, 0.5).pvalue)
    assert pick("sft", "dapo", "mathvista")["verdict"] == "no significant difference"
    assert float(pick("sft", "dapo", "mathvista")["p_mcnemar"]) == pytest.approx(0.5)
    pending = {(r["model"], r["a"], r["b"], r["seed"]) for r in rows if r["status"] == "pending"}
    assert ("tiny-b", "sft", "grpo", "0") in pending and ("tiny-a", "sft", "grpo", "2") in pending


def test_pending_cells_never_zero(study):
    st, res = study
    main = read_csv(res, "main.csv")
    for r in main:
        if r["model"] == "tiny-b" and r["method"] != "base":
            assert r["status"] == "pending" and r["mean"] == ""
    text = res.main_text
    b_rows = [ln for ln in text.split("tiny-b", 1)[1].splitlines() if ln.startswith("  ")]
    assert [ln.split()[0] for ln in b_rows if "pending" in ln] == ["sft", "grpo"]
    assert all(ln.count("pending") == 3 for ln in b_rows if "pending" in ln)
    md = (Path(storage.local_path(res.out)) / "report.md").read_text()
    assert "100.0" not in md  # the incomplete stage's perfect score is never read
    assert "2/3 seeds" in md and "not finished" in md
    states = {r: {s.kind: s.state for s in ss} for r, ss in res.report.stages.items()}
    assert states["tiny-b-grpo-distill-100-0"] == {"rl": "started", "eval": "waiting"}
    assert states["tiny-b-sft-distill-100-0"] == {"sft": "done", "eval": "started"}
    assert res.report.n_complete == len(st.items) and not res.complete


def test_efficiency_and_rl_csv(study):
    st, res = study
    eff = read_csv(res, "efficiency.csv")
    main = {(r["model"], r["method"], r["data"], r["scale"]): r for r in read_csv(res, "main.csv") if r["column"] == "mm_avg"}
    assert eff and all(r["column"] == "mm_avg" for r in eff)
    for r in eff:
        assert r["mean"] == main[(r["model"], r["method"], r["data"], r["scale"])]["mean"]
    rl = {r["run"]: r for r in read_csv(res, "rl.csv")}
    assert rl["tiny-b-grpo-distill-100-0"]["complete"] == "0"  # running stage is shown
    assert rl["tiny-a-grpo-distill-100-0"]["complete"] == "1"
    assert "tiny-a-grpo-distill-1000-2" in rl  # its RL finished; only its eval is pending
    for r in rl.values():
        assert r["deceptive_windows"] == "60-80" and int(r["steps"]) == 100
        assert float(r["deceptive_share"]) == pytest.approx(len(DECEPTIVE_STEPS) / 21)
        assert float(r["heldout_best"]) == pytest.approx(0.5)


def test_malformed_rows_counted_not_fatal(study):
    st, res = study
    issues = " ".join(res.report.issues)
    assert "tiny-a-dapo-distill-1000-0: 1 malformed and 1 duplicate rows" in issues
    assert "stages/rl-tiny-a-grpo-distill-100-0/metrics.jsonl: 2 malformed rows skipped" in issues
    assert "rl-tiny-b" not in issues  # the torn last line of a running stage is expected


def test_half_finished_experiment(tmp_path):
    st = make_study(tmp_path / "runs")
    for run in st.runs.values():  # nothing evaluated but the base models
        if run["method"] != "base":
            (tmp_path / "runs" / "stages" / run["eval"] / "_SUCCESS").unlink(missing_ok=True)
    res = build_report(st.uri, st.name, str(tmp_path / "out"))
    rows = read_csv(res, "main.csv")
    assert all(r["status"] == ("ok" if r["method"] == "base" else "pending") for r in rows)
    assert all(r["status"] == "pending" for r in read_csv(res, "pairs.csv"))
    assert not any(f.startswith("efficiency_") for f in res.files)
    assert "No trained runs with a data scale have finished yet." in (tmp_path / "out" / "report.md").read_text()
    # nothing at all evaluated
    for run in st.runs.values():
        (tmp_path / "runs" / "stages" / run["eval"] / "_SUCCESS").unlink(missing_ok=True)
    text = main_table_text(st.uri, st.name, width=120)
    assert "pending" in text and "0.0" not in text


def test_main_table_text_fits_width(study):
    st, _ = study
    for width in (80, 100):
        text = main_table_text(st.uri, st.name, width=width)
        assert max(len(ln) for ln in text.splitlines()) <= width
        assert "*" in text and "pending" in text
    wide = main_table_text(st.uri, st.name, width=300)
    assert "[" in wide and "seeds)" in wide  # full detail when there is room


def test_report_command_forms(study, tmp_path, capsys):
    st, _ = study
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"apiVersion": "sftrl/v1", "kind": "Experiment", "metadata": {"name": st.name}, "spec": {"storage": st.uri}}))
    assert report_command(str(exp), str(tmp_path / "a"), None) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "a" / "report.html") in out and "pending" in out and "tiny-a" in out
    assert (tmp_path / "a" / "report.md").exists() and (tmp_path / "a" / "main.csv").exists()
    assert resolve_experiment(st.name, st.uri) == (st.uri, st.name)
    assert resolve_experiment(f"{st.uri}/experiments/{st.name}/", None) == (st.uri, st.name)
    assert resolve_experiment(str(exp), None, resolver=lambda path: ("other", "s3://b/p")) == ("s3://b/p", "other")
    assert resolve_experiment("demo", None) == (storage.normalize("./runs"), "demo")
    assert report_command("nope", None, st.uri) == 2
    err = capsys.readouterr().err
    assert "because" in err and "Traceback" not in err
    assert report_command(str(tmp_path / "missing.yaml"), None, None) == 2
    text = summary_text(st.uri, st.name, str(tmp_path / "d"))
    assert "SFT vs RL:" in text and "significant" in text


def test_missing_plan_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="Run `sftrl run"):
        load_experiment(storage.normalize(tmp_path), "ghost")


# --- outputs: plots, HTML, browser rendering, S3 ----------------------------------------------


def _png_ok(data: bytes) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    assert img.width >= 300 and img.height >= 200
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 20, "the plot is (nearly) one colour"
    white = sum(n for n, c in colors if min(c) >= 250)
    assert white / (img.width * img.height) < 0.99


def test_plots_exist_and_are_not_blank(study):
    st, res = study
    out = Path(storage.local_path(res.out))
    pngs = sorted(f for f in res.files if f.endswith(".png"))
    rl_runs = {r["run"] for r in st.runs.values() if r["method"] in ("grpo", "dapo", "sft+grpo")}
    assert pngs == sorted(["efficiency_tiny-a.png"] + [f"rl_{r}.png" for r in rl_runs])
    for f in pngs:
        data = (out / f).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        _png_ok(data)


def test_html_is_self_contained(study):
    st, res = study
    page = (Path(storage.local_path(res.out)) / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == sum(f.endswith(".png") for f in res.files)
    assert not re.search(r"(src|href)=['\"](?!data:)", page), "the page must not reference other files"
    assert "<style>" in page and "class='best'" in page and "pending" in page
    md = (Path(storage.local_path(res.out)) / "report.md").read_text()
    for f in res.files:
        if f.endswith(".png"):
            assert f"]({f})" in md


def test_html_renders_in_headless_chromium(study, tmp_path):
    chromium = require_tool("chromium")
    _, res = study
    html_path = Path(storage.local_path(res.out)) / "report.html"
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
             "--window-size=1280,2000"]
    proc = subprocess.run([chromium, *flags, html_path.as_uri()], capture_output=True, text=True, timeout=180)
    assert shot.exists(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000)
    colors = img.getcolors(maxcolors=1 << 22)
    assert colors is not None and len(colors) > 100
    white = sum(n for n, c in colors if min(c) >= 250)
    assert white / (img.width * img.height) < 0.99
    heading = sum(n for n, c in colors if c == (0x0B, 0x3D, 0x91))  # the CSS heading/table colour is drawn
    assert heading > 1000


def test_report_on_s3_storage(study, monkeypatch):
    """The same study read from a real S3 API (moto server on loopback) gives the same report, written to S3."""
    import boto3

    from tests.job_runtime.conftest import moto_server, point_at, reset_s3_backend

    st, local = study
    with moto_server() as endpoint:
        point_at(monkeypatch, endpoint)
        try:
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="study")
            root = "s3://study/sftrl"
            storage.upload_dir(st.root, root)
            res = build_report(root, st.name)
            assert res.out == f"{root}/experiments/{st.name}/report"
            for f in local.files:
                assert storage.exists(storage.join(res.out, f)), f
            for f in ("main.csv", "pairs.csv", "rl.csv"):
                assert storage.read_text(storage.join(res.out, f)) == storage.read_text(storage.join(local.out, f))
            assert res.main_text == local.main_text
        finally:
            reset_s3_backend()


def test_summary_says_change_from_base_and_signal_availability(study, tmp_path):
    st, _ = study
    text = summary_text(st.uri, st.name, str(tmp_path / "s"))
    assert "tiny-a, change from base on mm_avg (points):" in text
    signal = np.mean([0.5 + step / 400 for step in range(0, 105, 5)])  # what _write_rl logged
    rl_lines = [l for l in text.splitlines() if " over 100 steps" in l]
    assert rl_lines and all(f"mean {signal:.2f} over 100 steps" in l for l in rl_lines)
    assert "held-out accuracy 30.0 -> 35.0" in rl_lines[0]  # step 0: 0.3; step 100: 0.3 + 0.2 - 0.15
