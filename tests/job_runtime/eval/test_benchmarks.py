"""Benchmark registry and loaders: every file in ../shared/benchmarks through the real loaders,
every supported file format, folders, s3:// (a real moto server) and clear errors."""

from __future__ import annotations

import csv
import doctest
import importlib
import json

import pytest

from job_runtime.eval.benchmarks import base, registry
from job_runtime.eval.benchmarks.base import BenchmarkDataError
from job_runtime.eval.benchmarks.registry import UnknownBenchmark, get, names
from tests.conftest import require_shared

SHARED_FILES = {
    # benchmark: (file, rows, fields every row must have)
    "mathvista": ("mathvista_testmini.json", 1000, ("pid", "question", "choices", "answer", "question_type", "answer_type", "precision", "metadata")),
    "mathvision": ("mathvision_test.jsonl", 3040, ("id", "question", "options", "answer", "subject", "level")),
    "mathvision_testmini": ("mathvision_testmini.jsonl", 304, ("id", "question", "options", "answer", "subject", "level")),
    "mathverse": ("mathverse_testmini_text_only.json", 788, ("sample_index", "problem_version", "question", "answer", "question_type", "query_cot")),
    "wemath": ("wemath_testmini.json", 1740, ("ID", "key", "question", "option", "answer")),
}


def test_registry_lists_every_benchmark_of_the_issue():
    assert {"mathvista", "mathvision", "mathvision_testmini", "mathverse", "wemath", "gpqa", "math500", "mmlu",
            "hallusionbench", "mmbench", "synthetic"} <= set(names())
    for name in names():
        b = get(name)
        assert b.name == name and b.hf_id and b.split and b.metric


def test_unknown_benchmark_lists_known_ones():
    with pytest.raises(UnknownBenchmark) as e:
        get("mathvsta")
    msg = str(e.value)
    assert "mathvsta" in msg and "Did you mean 'mathvista'" in msg and "wemath" in msg


def test_module_doctests():
    for mod in ("base", "registry", "mathvista", "mathvision", "mathverse", "wemath", "gpqa", "hallusionbench",
                "mmbench", "scoring"):
        result = doctest.testmod(importlib.import_module(f"job_runtime.eval.benchmarks.{mod}"))
        assert result.failed == 0, mod


@pytest.mark.parametrize("name", sorted(SHARED_FILES))
def test_shared_files_load_with_counts_and_fields(name):
    file, count, fields = SHARED_FILES[name]
    path = require_shared("benchmarks", file)
    bench = get(name)
    rows = bench.load(str(path))
    assert len(rows) == count
    for row in rows:
        assert all(f in row for f in fields), (name, row.get(bench.id_field))
        assert bench.validate(row) is None
    ids = [bench.item_id(r) for r in rows]
    assert len(set(ids)) == len(ids), "item ids must be unique"
    for style in ("study", "official"):
        prompt = bench.prompt(rows[0], style)
        assert str(rows[0]["question"]).strip()[:30] in prompt
    assert "You FIRST think" in bench.prompt(rows[0])
    assert bench.load(str(path), limit=7) == rows[:7]


def test_shared_multiple_choice_prompts_list_options():
    rows = get("mathvista").load(str(require_shared("benchmarks", "mathvista_testmini.json")))
    row = next(r for r in rows if r["pid"] == "3")
    assert "(A) 135°" in get("mathvista").prompt(row) and "(C) 145°" in get("mathvista").prompt(row)
    assert get("mathvista").prompt(row, "official").startswith("Hint: Please answer the question and provide the correct option letter")
    wm = get("wemath")
    row = wm.load(str(require_shared("benchmarks", "wemath_testmini.json")))[0]
    assert "(C) 3000, 4000" in wm.prompt(row) and "<Answer>: <<your option>>" in wm.prompt(row, "official")


def test_wemath_options_parse_on_every_shared_row():
    wm = get("wemath")
    for row in wm.load(str(require_shared("benchmarks", "wemath_testmini.json"))):
        opts = wm.choices(row)
        assert opts and "ABCDEFGH".index(row["answer"]) < len(opts), row["ID"]


def test_mathverse_choices_parse_on_every_shared_multiple_choice_row():
    mv = get("mathverse")
    rows = [r for r in mv.load(str(require_shared("benchmarks", "mathverse_testmini_text_only.json")))
            if r["question_type"] == "multi-choice" and len(r["answer"].strip("()")) == 1]
    parsed = [r for r in rows if mv.choices(r)]
    assert len(parsed) >= 0.95 * len(rows)


# --- formats and sources -----------------------------------------------------------------------

ROWS = [{"unique_id": f"u{i}", "problem": f"{i}+1?", "answer": str(i + 1), "level": 1, "subject": "a"} for i in range(5)]


def _write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if path.suffix == ".tsv" else ",")
            w.writeheader()
            w.writerows(rows)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv", ".tsv"])
def test_every_file_format_loads(tmp_path, suffix):
    path = tmp_path / f"test{suffix}"
    _write(path, ROWS)
    rows = get("math500").load(str(path))
    assert [r["unique_id"] for r in rows] == [r["unique_id"] for r in ROWS]
    assert str(rows[2]["answer"]) == "3"


def test_folder_and_file_uri(tmp_path):
    _write(tmp_path / "other.json", [{"x": 1}])
    _write(tmp_path / "test.jsonl", ROWS)  # the split's name wins
    assert len(get("math500").load(str(tmp_path))) == 5
    assert len(get("math500").load(f"file://{tmp_path}/test.jsonl", limit=2)) == 2


def test_s3_source(s3_bucket, tmp_path):
    from job_runtime.io import storage

    _write(tmp_path / "test.jsonl", ROWS)
    storage.upload_file(tmp_path / "test.jsonl", f"{s3_bucket}/bench/math500/test.jsonl")
    assert len(get("math500").load(f"{s3_bucket}/bench/math500/test.jsonl")) == 5
    assert len(get("math500").load(f"{s3_bucket}/bench/math500")) == 5  # a prefix holding the file


def test_missing_data_names_benchmark_and_override(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(BenchmarkDataError) as e:
        get("gpqa").load()  # no hub here
    assert "'gpqa'" in str(e.value) and "eval.data.gpqa" in str(e.value) and "Idavidrein/gpqa" in str(e.value)
    with pytest.raises(BenchmarkDataError, match="eval.data.mathvista"):
        get("mathvista").load(str(tmp_path / "nope.json"))
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n')
    with pytest.raises(BenchmarkDataError, match="line 2"):
        get("math500").load(str(tmp_path / "bad.jsonl"))


def test_images_from_paths_bytes_and_pil(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "images" / "1.jpg")
    _write(tmp_path / "testmini.json", [{"pid": "1", "question": "q", "image": "images/1.jpg", "choices": None,
                                         "answer": "1", "question_type": "free_form", "answer_type": "integer"}])
    bench = get("mathvista")
    row = bench.load(str(tmp_path))[0]
    assert bench.images(row)[0].size == (8, 8)
    import io

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    assert base.row_images({"image": {"bytes": buf.getvalue()}}, None, "x")[0].size == (4, 4)
    assert base.row_images({"decoded_image": Image.new("L", (3, 3))}, None, "x")[0].mode == "RGB"
    with pytest.raises(BenchmarkDataError, match="eval.data.mathvista"):
        bench.images(dict(row, image="images/missing.jpg"))


def test_public_row_drops_image_payloads():
    from PIL import Image

    out = base.public_row({"id": 1, "image": Image.new("RGB", (2, 2)), "decoded_image": b"xx", "q": "a"})
    assert out == {"id": 1, "q": "a"}


def test_synthetic_rows_and_prompt():
    bench = get("synthetic")
    rows = bench.load(limit=5)
    assert len(rows) == 5 and len(bench.load()) == 100
    assert rows == bench.load(limit=5)  # fixed seed
    assert bench.images(rows[0])[0].size == (64, 64)
    assert bench.prompt(rows[0]).startswith("How many squares are filled?")
    assert bench.score(rows[0], rows[0]["trace"]).correct
    assert len(bench.load("builtin://synthetic/test?n=3")) == 3


def test_registry_module_is_light():
    # importing the registry must not import every benchmark (or torch)
    assert registry.REGISTRY["wemath"] == "wemath:WeMath"


def test_base64_images_as_in_mmbench_tsv():
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "blue").save(buf, format="JPEG")  # JPEG base64 starts with "/9j/"
    encoded = base64.b64encode(buf.getvalue() + b"\0" * 1024).decode()
    assert encoded.startswith("/9j/")
    assert base.row_images({"image": encoded}, None, "mmbench")[0].size == (40, 30)


def test_contract_lists_every_registered_benchmark():
    from job_runtime.eval.benchmarks.registry import names
    from job_runtime.contract import BENCHMARK_NAMES

    assert tuple(names()) == BENCHMARK_NAMES
