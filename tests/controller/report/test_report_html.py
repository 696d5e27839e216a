"""The HTML report as a reader sees it: rendered by headless Chromium (a screenshot, and the page's
DOM after layout), plus the figures' axes.

Each check fails on the report as it was: the best cell lost its highlight on even rows (the
zebra rule won), the held-out axis was a fraction beside percent tables, one data scale spread
three points over the whole plot, an interval excluding 0 stood next to "no significant
difference" without a word, and the legend explained an "MM avg" column the table did not have.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from controller.report.load import build_report
from controller.report.render import efficiency_figure, rl_figure
from job_runtime.io import storage
from tests.conftest import require_tool
from tests.controller.test_cli_trust import eval_files, fake_stage, saved_plan, write

WINDOW = (1280, 3000)
BEST = (0xE3, 0xF4, 0xE1)  # td.best
ZEBRA = (0xF2, 0xF5, 0xFA)  # even rows


def _items(both: int, a_only: int, b_only: int, n: int = 200) -> tuple[list[bool], list[bool]]:
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * (n - both - a_only - b_only)
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * (n - both - a_only - b_only)
    return a, b


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """base 30%, sft 57% (the best, on the 2nd = even row), grpo 52.5%, sft+grpo 50%; one scale;
    sft vs grpo: 14 vs 5 discordant items, so the Newcombe interval excludes 0 but McNemar p = 0.064."""
    tmp = tmp_path_factory.mktemp("html")
    plan = saved_plan(write(tmp, methods=("sft", "grpo", "sft+grpo")))
    by_method = {r.method: r for r in plan.runs}
    sft, grpo = _items(100, 14, 5)
    scores = {"base": [True] * 60 + [False] * 140, "sft": sft, "grpo": grpo, "sft+grpo": [True] * 100 + [False] * 100}
    for method, run in by_method.items():
        for sid in run.train:
            if not storage.is_complete(plan.stages[sid].config.output):
                rows = [{"step": s, "reward": 0.1 + s / 100, "heldout_accuracy": 0.3 + s / 200, "frac_reward_zero_std": 0.5}
                        for s in range(0, 50, 10)]
                files = {"model/model.safetensors": b"w"}
                if plan.stages[sid].kind == "rl":
                    files["metrics.jsonl"] = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
                fake_stage(plan, sid, files)
        fake_stage(plan, run.eval, eval_files(scores[method]))
    return build_report(plan.root, plan.experiment)


def _chromium(tmp_path: Path, page: Path, *flags: str) -> subprocess.CompletedProcess:
    chromium = require_tool("chromium")
    base = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars"]
    return subprocess.run([chromium, *base, *flags, page.as_uri()], capture_output=True, text=True, timeout=180)


PROBE = """<pre id='probe'></pre><script>
const cells = [...document.querySelectorAll('td.best')].map(td => {
  const r = td.getBoundingClientRect();
  return {even: [...td.parentElement.parentElement.children].indexOf(td.parentElement) % 2 === 1,
          x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height};
});
document.getElementById('probe').textContent = JSON.stringify({cells, text: document.body.innerText});
</script></body>"""


@pytest.fixture(scope="module")
def rendered(report, tmp_path_factory):
    """(screenshot, {cells: rects of td.best, text: the page's visible text}) from headless Chromium."""
    tmp = tmp_path_factory.mktemp("chromium")
    page = Path(storage.local_path(report.out)) / "report.html"
    shot = tmp / "shot.png"
    proc = _chromium(tmp, page, f"--screenshot={shot}")
    assert shot.exists(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    probe = tmp / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE))
    dom = _chromium(tmp, probe, "--dump-dom", "--virtual-time-budget=5000").stdout
    m = re.search(r"<pre id=\"probe\">(.*?)</pre>", dom, re.S)
    assert m, dom[-2000:]
    import html

    from PIL import Image

    return Image.open(shot).convert("RGB"), json.loads(html.unescape(m.group(1)))


def test_the_best_cell_is_highlighted_on_even_rows_too(rendered):
    img, probe = rendered
    even = [c for c in probe["cells"] if c["even"]]
    assert even, "the fixture puts a best cell on an even row"
    for c in even:
        x, y = int(c["x"] + 3), int(c["y"] + c["h"] / 2)  # inside the cell's left padding, away from the text
        assert img.getpixel((x, y)) == BEST, f"pixel {img.getpixel((x, y))} (zebra is {ZEBRA})"


def test_a_verdict_says_when_interval_and_test_disagree(rendered, report):
    _, probe = rendered
    pair = next(p for p in report.report.pairs if {p.a, p.b} == {"sft", "grpo"} and p.benchmark == "synthetic")
    assert pair.lo > 0 and pair.p >= 0.05  # the situation the fixture builds
    assert "no significant difference (exact test p = 0.064; the interval excludes 0, see Method)" in probe["text"]
    assert "the verdict always follows the test" in probe["text"]


def test_the_legend_explains_only_columns_that_exist(rendered):
    _, probe = rendered
    assert "MM avg" not in probe["text"]
    assert "Accuracy (%) per benchmark; One seed" in probe["text"]


def test_held_out_accuracy_is_plotted_in_percent(report):
    curve = report.report.curves[0]
    fig = rl_figure(curve)
    ax2 = next(a for a in fig.axes if a.get_ylabel().startswith("held-out"))
    assert ax2.get_ylabel() == "held-out accuracy (%)"
    lo, hi = ax2.get_ylim()
    assert 25 < lo and hi < 60  # the values are 30..50 (%), not 0.3..0.5


def test_one_data_scale_is_not_stretched_over_the_width(report):
    rep = report.report
    model, rows = next(iter(rep.main.blocks.items()))
    fig = efficiency_figure(model, rows, rep.main.columns[0])
    ax = fig.axes[0]
    xs = [x for line in ax.lines for x in line.get_xdata() if line.get_marker() == "o"]
    lo, hi = ax.get_xlim()
    assert len(xs) == 3 and (max(xs) - min(xs)) / (hi - lo) < 0.6
    assert fig.get_figwidth() < 5
