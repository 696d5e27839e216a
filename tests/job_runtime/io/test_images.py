"""Images into the pixel bounds exactly as EasyR1 (verl/utils/dataset.py process_image) and
LLaMA-Factory (data/mm_plugin.py _preprocess_image) resize them; and the datasets the stages use."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from job_runtime.io import data, images

EASYR1 = {"min_pixels": 262144, "max_pixels": 4194304}


@pytest.mark.parametrize(
    "size,bounds,expected",
    [
        ((64, 64), EASYR1, (512, 512)),  # a small diagram grows to 262144 pixels
        ((100, 50), EASYR1, (724, 362)),  # sqrt(262144 / 5000) = 7.24...: ints truncate
        ((4000, 3000), EASYR1, (2364, 1773)),  # a photo shrinks below 4194304
        ((1000, 1000), EASYR1, (1000, 1000)),  # inside the bounds: untouched
        ((5000, 10), EASYR1, (11448, 22)),  # max first (1: no-op), then min: sqrt(262144 / 50000) = 2.29
        ((1000, 1000), {"min_pixels": 1024, "max_pixels": 262144}, (512, 512)),  # LLaMA-Factory SFT bound
        ((20, 20), {"min_pixels": 1024, "max_pixels": 262144}, (32, 32)),
        ((64, 64), {"min_pixels": None, "max_pixels": None}, (64, 64)),
    ],
)
def test_fit_matches_the_frameworks_rule(size, bounds, expected):
    out = images.fit(Image.new("L", size), **bounds)
    assert out.size == expected and out.mode == "RGB"
    if bounds["max_pixels"]:
        assert out.width * out.height <= bounds["max_pixels"]


def test_qwen2vl_guards_of_llamafactory():
    assert images.fit(Image.new("RGB", (10, 400)), qwen2vl_guards=True).size == (28, 400)
    assert images.fit(Image.new("RGB", (6000, 28)), qwen2vl_guards=True).size == (5040, 28)  # ratio > 200 -> 180


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def test_rl_dataset_and_heldout_rows_are_fitted_as_rows_are_read(tmp_path):
    rows = [{"image": _png(64, 64), "question": "How many?", "answer": "3"}] * 3
    import json

    path = tmp_path / "rl.jsonl"
    path.write_text("\n".join(json.dumps({**r, "image": f"img{i}.png"}) for i, r in enumerate(rows)))
    for i in range(3):
        (tmp_path / f"img{i}.png").write_bytes(_png(64, 64))
    ds = data.fit_images(data.rl_dataset({"train": str(path)}), **EASYR1)
    assert ds[0]["image"].size == (512, 512) and ds[[1, 2]]["image"][1].size == (512, 512)
    assert ds.select([0])[0]["image"].size == (512, 512)  # survives select (the prompt-length filter uses it)
    assert data.rl_dataset({"train": str(path)})[0]["image"].size == (64, 64)  # no bounds: as stored
    held = data.heldout_rows({"heldout": str(path)}, 2, **EASYR1)
    assert [r["image"].size for r in held] == [(512, 512)] * 2
