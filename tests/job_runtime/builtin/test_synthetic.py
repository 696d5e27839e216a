"""The synthetic visual-arithmetic task: determinism, disjoint splits, images that carry the answer."""

from __future__ import annotations

import doctest
import re
from collections import Counter

import pytest

from job_runtime.builtin import synthetic
from job_runtime.builtin.synthetic import (
    ADDENDS,
    IMAGE_SIZE,
    PALETTE,
    generate,
    is_test_item,
    make_trace,
    parse_uri,
    verify_trace,
)


def test_doctests():
    result = doctest.testmod(synthetic)
    assert result.attempted >= 8 and result.failed == 0


def test_deterministic_and_prefix_stable():
    a, b = generate("train", 20, seed=3), generate("train", 40, seed=3)
    assert [r["id"] for r in a] == [r["id"] for r in b[:20]]
    assert [r["image"].tobytes() for r in a] == [r["image"].tobytes() for r in b[:20]]
    assert [r["trace"] for r in generate("train", 20, seed=4)] != [r["trace"] for r in a]


def test_aliases_share_the_training_questions():
    sft, rl = generate("sft", 10), generate("rl", 10)
    assert [r["question"] for r in sft] == [r["question"] for r in rl]
    assert [r["image"].tobytes() for r in sft] == [r["image"].tobytes() for r in rl]


def test_splits_are_disjoint_by_construction():
    train, test = generate("train", 400), generate("test", 400)
    key = lambda r: (r["pattern"], r["addend"], r["colour"])  # noqa: E731
    assert all(not is_test_item(*key(r)) for r in train)
    assert all(is_test_item(*key(r)) for r in test)
    assert not {key(r) for r in train} & {key(r) for r in test}
    # every test sum (count, addend) is a sum the training split teaches
    sums = lambda rows: {(bin(r["pattern"]).count("1"), r["addend"]) for r in rows}  # noqa: E731
    assert sums(test) <= sums(generate("train", 2000))


def test_rows_are_consistent_and_traces_verified():
    for r in generate("test", 100, seed=1):
        count = bin(r["pattern"]).count("1")
        assert r["answer"] == str(count + r["addend"])
        assert r["question"] == f"How many squares are filled? Add {r['addend']}."
        assert verify_trace(r["trace"], r["answer"]) and r["trace"] == make_trace(r["pattern"], r["addend"])
        assert re.fullmatch(r"<think>.*</think> \\boxed\{\d\}", r["trace"])
        assert r["addend"] in ADDENDS and r["colour"] in range(len(PALETTE))


def test_image_shows_the_pattern():
    half = IMAGE_SIZE // 2
    for r in generate("train", 60):
        img = r["image"]
        assert img.size == (IMAGE_SIZE, IMAGE_SIZE) and img.mode == "RGB"
        corner = img.getpixel((1, 1))  # background
        for i in range(4):
            centre = img.getpixel(((i % 2) * half + half // 2, (i // 2) * half + half // 2))
            filled = bool(r["pattern"] >> i & 1)
            differs = sum(abs(a - b) for a, b in zip(centre, corner)) > 60
            assert differs == filled, (r["id"], i)


def test_counts_are_uniform_so_the_image_is_needed():
    counts = Counter(bin(r["pattern"]).count("1") for r in generate("train", 1000))
    assert set(counts) == {0, 1, 2, 3, 4}
    assert max(counts.values()) < 0.26 * 1000  # a blind guess scores about 20%


@pytest.mark.parametrize(
    "uri,expected",
    [
        ("builtin://synthetic/sft", ("train", 1000, 0)),
        ("builtin://synthetic/rl?n=512", ("train", 512, 0)),
        ("builtin://synthetic/test?n=7&seed=2", ("test", 7, 2)),
    ],
)
def test_parse_uri(uri, expected):
    assert parse_uri(uri) == expected


@pytest.mark.parametrize(
    "uri,match",
    [
        ("builtin://synthetic/valid", "split 'valid' is unknown"),
        ("builtin://synthetic/rl?size=3", "unknown query keys"),
        ("builtin://synthetic/rl?n=many", "must be integers"),
        ("s3://b/x.parquet", "not a synthetic dataset URI"),
    ],
)
def test_bad_uris_are_explained(uri, match):
    with pytest.raises(ValueError, match=match):
        parse_uri(uri)


def test_load_uri_honours_n():
    assert len(synthetic.load_uri("builtin://synthetic/rl?n=5")) == 5
