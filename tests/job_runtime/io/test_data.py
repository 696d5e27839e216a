"""Training data: sources (builtin, jsonl, parquet, folders, s3, HF), nested subsets, bad rows, and
the model loaders' reference resolution and errors."""

from __future__ import annotations

import doctest
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from job_runtime.io import data, modeling, storage
from job_runtime.io.data import DataError, load_rl, load_sft, subset_order
from job_runtime.prompts import FORMAT_PROMPT


def png(colour=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return buf.getvalue()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def image_rows(folder: Path, n: int) -> list[dict]:
    """n valid rows whose images are PNG files next to the data file (relative paths)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        (folder / "img" / f"{i}.png").write_bytes(png((i * 8 % 256, 0, 0)))
        rows.append({"id": f"r{i}", "image": f"img/{i}.png", "problem": f"<image>What is {i} + 1?",
                     "answer": str(i + 1), "response": f"<think>{i} + 1</think> \\boxed{{{i + 1}}}"})
    return rows


def ids(ds) -> list[str]:
    return list(ds["id"])


def test_doctests():
    result = doctest.testmod(data)
    assert result.attempted >= 3 and result.failed == 0


def test_builtin_sft_rows_are_prompt_completion_with_the_format_prompt():
    ds, report = load_sft({"train": "builtin://synthetic/sft"}, scale=6)
    assert len(ds) == 6 and report.used == 6 and not report.skipped
    row = ds[0]
    assert row["images"][0].size == (64, 64)
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].endswith(FORMAT_PROMPT)
    assert row["prompt"][0]["content"].startswith("How many squares are filled? Add ")
    assert row["completion"][0]["role"] == "assistant" and row["completion"][0]["content"].startswith("<think>")


def test_builtin_rl_rows_share_the_sft_questions():
    rl, _ = load_rl("builtin://synthetic/rl", scale=6)
    sft, _ = load_sft("builtin://synthetic/sft", scale=6)
    assert set(rl.column_names) == {"image", "prompt", "answer", "id"}
    assert rl["prompt"] == sft["prompt"] and ids(rl) == ids(sft)
    assert [r["completion"][0]["content"].endswith(f"\\boxed{{{a}}}") for r, a in zip(sft, rl["answer"])] == [True] * 6


def test_subsets_are_nested_and_ignore_the_run_seed(tmp_path):
    src = write_jsonl(tmp_path / "rl.jsonl", image_rows(tmp_path, 30))
    small = ids(data.rl_dataset({"train": str(src)}, scale=10, seed=0))
    large = ids(data.rl_dataset({"train": str(src)}, scale=20, seed=7))
    assert small == large[:10]
    assert small == [f"r{i}" for i in subset_order(30)[:10]]
    assert small != [f"r{i}" for i in range(10)]  # a shuffle, not the file order
    builtin_small = ids(data.sft_dataset({"train": "builtin://synthetic/sft"}, scale=5))
    assert builtin_small == ids(data.sft_dataset({"train": "builtin://synthetic/sft?n=50"}, scale=20))[:5]


def test_malformed_rows_are_counted_and_skipped(tmp_path, caplog):
    rows = image_rows(tmp_path, 8)
    rows[1]["answer"] = ""
    (tmp_path / "img" / "2.png").write_bytes(b"not a png")
    (tmp_path / "img" / "3.png").write_bytes(png()[:40])  # truncated
    rows[4]["image"] = "img/missing.png"
    del rows[5]["problem"]
    src = tmp_path / "rl.jsonl"
    write_jsonl(src, rows)
    with src.open("a") as f:
        f.write("{broken json\n")
    ds, report = load_rl(str(src))
    assert sorted(ids(ds)) == ["r0", "r6", "r7"]
    assert report.total == 9 and report.used == 3
    assert report.skipped == {"no answer": 1, "unreadable image": 2, "image file not found": 1, "no question": 1,
                              "not JSON": 1}
    assert "used 3 of 9 rows; skipped 6" in report.summary()
    assert "skipped 6" in caplog.text
    assert report.as_dict()["skipped"] == report.skipped  # what results.json and the report add up


def test_skipped_rows_add_up_by_reason_with_details_only_in_examples(tmp_path):
    rows = image_rows(tmp_path, 6)
    rows[0]["image"], rows[1]["image"], rows[2]["image"] = "img/gone-a.png", "img/gone-b.png", "img/gone-c.png"
    src = write_jsonl(tmp_path / "rl.jsonl", rows)
    with src.open("a") as f:
        f.write("{broken\n[1, 2\n")
    _, report = load_rl(str(src))
    assert report.skipped == {"image file not found": 3, "not JSON": 2}
    assert any("img/gone-" in e for e in report.examples) and any("line 7" in e for e in report.examples)


def test_a_numeric_question_is_a_question(tmp_path):
    rows = image_rows(tmp_path, 2)
    rows[0]["problem"], rows[1]["problem"] = 12345, 2.5
    _, report = load_rl(str(write_jsonl(tmp_path / "rl.jsonl", rows)))
    assert report.used == 2 and not report.skipped


def test_scale_beyond_the_usable_rows_is_an_error(tmp_path):
    rows = image_rows(tmp_path, 5)
    rows[0]["answer"] = None
    src = write_jsonl(tmp_path / "rl.jsonl", rows)
    with pytest.raises(DataError, match=r"Data scale 10 exceeds the 4 usable rows of .*rl.jsonl.*skipped 1"):
        load_rl(str(src), scale=10)
    with pytest.raises(DataError, match=r"exceeds the 3 usable rows.*\?n=\.\.\."):
        load_rl("builtin://synthetic/rl?n=3", scale=4)


def test_parquet_with_hf_image_structs_and_choices(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([
        {"id": "a", "image": {"bytes": png(), "path": None}, "question": "Which animal?", "answer": "B",
         "choices": ["cat", "dog"]},
        {"id": "b", "image": {"bytes": png((0, 0, 255)), "path": "x.png"}, "question": "Colour?", "answer": "blue",
         "choices": ["red", "blue"]},
    ])
    pq.write_table(table, tmp_path / "rl.parquet")
    ds, _ = load_rl(str(tmp_path / "rl.parquet"))
    assert "choices" in ds.column_names
    row = {r["id"]: r for r in ds}["a"]
    assert row["choices"] == ["cat", "dog"] and row["image"].size == (32, 32)


def test_sft_from_sharegpt_and_openai_messages(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(png())
    rows = [
        {"id": "s", "images": [str(img)], "conversations": [
            {"from": "human", "value": "<image>Count the shapes."}, {"from": "gpt", "value": "<think>1</think> \\boxed{1}"}]},
        {"id": "o", "image": str(img), "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <image>"},
            {"role": "assistant", "content": "<think>x</think> \\boxed{2}"}]},
        {"id": "bad", "image": str(img), "messages": [{"role": "user", "content": "no answer"}]},
        {"id": "q", "image": str(img), "question": f"Already formatted. {FORMAT_PROMPT}", "trace": "<think>t</think> \\boxed{3}"},
    ]
    ds, report = load_sft(str(write_jsonl(tmp_path / "sft.jsonl", rows)))
    by = {r["id"]: r for r in ds}
    assert by["s"]["prompt"] == [{"role": "user", "content": "Count the shapes."}]
    assert by["o"]["prompt"][0] == {"role": "system", "content": "Be brief."} and by["o"]["prompt"][1]["content"] == "Hi"
    assert by["o"]["completion"] == [{"role": "assistant", "content": "<think>x</think> \\boxed{2}"}]
    assert by["q"]["prompt"][0]["content"].count(FORMAT_PROMPT) == 1
    assert report.skipped == {"the last message is not an assistant answer": 1}


def test_folder_source_and_heldout_rows(tmp_path):
    rows = image_rows(tmp_path / "d", 6)
    write_jsonl(tmp_path / "d" / "part-0.jsonl", rows[:3])
    write_jsonl(tmp_path / "d" / "part-1.jsonl", rows[3:])
    held = data.heldout_rows({"heldout": f"file://{tmp_path / 'd'}"}, 4)
    assert len(held) == 4 and held[0]["image"].mode == "RGB" and held[0]["answer"]
    assert len(data.heldout_rows({"heldout": str(tmp_path / "d")}, 50)) == 6  # fewer rows: a warning only


def test_s3_source_with_relative_images(tmp_path, s3_bucket):
    rows = image_rows(tmp_path, 4)
    write_jsonl(tmp_path / "rl.jsonl", rows)
    storage.upload_dir(tmp_path, f"{s3_bucket}/data")
    ds, report = load_rl(f"{s3_bucket}/data/rl.jsonl", scale=4)
    assert sorted(ids(ds)) == ["r0", "r1", "r2", "r3"] and not report.skipped
    assert ds[0]["image"].size == (32, 32)


@pytest.mark.parametrize(
    "source,match",
    [
        ("{tmp}/rows.csv", "unsupported type"),
        ("{tmp}/nothing-here", "holds no .parquet/.jsonl/.json file"),
    ],
)
def test_bad_sources_are_explained(tmp_path, source, match):
    (tmp_path / "rows.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=match):
        load_rl(source.format(tmp=tmp_path))


def test_missing_role_and_bad_scale():
    with pytest.raises(DataError, match="no data.train URI"):
        load_sft({"heldout": "builtin://synthetic/test"})
    with pytest.raises(DataError, match="not positive"):
        load_sft("builtin://synthetic/sft", scale=0)


def test_hub_dataset_without_hub_access(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="could not be loaded from the Hugging Face hub.*parquet"):
        load_rl("hf://no-such-org/no-such-set?split=train")


# --- model references (job_runtime.io.modeling) --------------------------------------------------------


def test_model_references_resolve(tmp_path):
    tiny = modeling.resolve("builtin://tiny-qwen2-vl")
    assert (tiny / "config.json").is_file()
    assert modeling.resolve(f"file://{tiny}") == tiny
    assert modeling.resolve("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"
    with pytest.raises(modeling.ModelLoadError, match="only builtin://tiny-qwen2-vl and builtin://tiny-qwen2.5-vl exist"):
        modeling.resolve("builtin://huge-model")
    with pytest.raises(modeling.ModelLoadError, match="does not exist or is not a directory"):
        modeling.resolve(str(tmp_path / "absent"))


def test_model_loads_from_s3_and_reports_hub_failures(s3_bucket, monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setenv("SFTRL_CACHE", str(tmp_path / "cache"))
    tiny = modeling.resolve("builtin://tiny-qwen2-vl")
    storage.upload_dir(tiny, f"{s3_bucket}/stages/x/model")
    model = modeling.load_model(f"{s3_bucket}/stages/x/model", for_training=False)
    processor = modeling.load_processor(f"{s3_bucket}/stages/x/model")
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration" and not model.training
    assert processor.tokenizer.pad_token == "<|endoftext|>"
    with pytest.raises(modeling.ModelLoadError, match="has not finished"):
        modeling.load_model(f"{s3_bucket}/stages/unfinished/model")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(modeling.ModelLoadError, match="no hub access here"):
        modeling.load_model("no-such-org/no-such-model")
