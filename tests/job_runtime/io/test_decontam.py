"""Decontamination: training rows matching an evaluation item are dropped and counted per benchmark.

The planted-duplicate test reads the official question files in ../shared/benchmarks (it fails in
CI and skips elsewhere without them); the image tests use the synthetic task only, so the project
is covered without that folder too.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from job_runtime.builtin import synthetic
from job_runtime.contract import Decontamination
from job_runtime.eval.benchmarks.registry import get
from job_runtime.eval.contamination import ContaminationSetupError, index_for
from job_runtime.io import data
from job_runtime.io.decontam import Index, Reference, fingerprint, normalize, text_keys
from job_runtime.prompts import format_question
from tests.conftest import require_shared

FILES = {
    "mathvista": "mathvista_testmini.json",
    "mathvision": "mathvision_test.jsonl",
    "wemath": "wemath_testmini.json",
    "mathverse": "mathverse_testmini_text_only.json",
}
CLEAN = [
    "Add the two numbers printed on the cards and give the total as a whole number.",
    "How many red apples are on the table in this photograph, counting the ones in the basket?",
    "Find the perimeter of the rectangle drawn in the figure if its sides are 3 cm and 5 cm long.",
    "Which of the animals in the image can fly, and how many legs does it have in total?",
    "A train leaves the station at noon and travels at 60 km per hour. How far has it gone at 3 pm?",
]


def png(image: Image.Image, fmt: str = "PNG", size: int | None = None) -> bytes:
    buf = io.BytesIO()
    (image.resize((size, size)) if size else image).convert("RGB").save(buf, format=fmt, quality=85)
    return buf.getvalue()


def write_rows(folder: Path, rows: list[dict]) -> Path:
    """A jsonl training set whose images are files next to it."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    out = []
    for i, r in enumerate(rows):
        (folder / "img" / f"{i}.png").write_bytes(r.pop("image_bytes"))
        out.append({**r, "id": r.get("id", f"row-{i}"), "image": f"img/{i}.png"})
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def plain_image(i: int) -> bytes:
    im = Image.new("RGB", (48, 48), (255, 255, 255))
    im.paste((i * 37 % 256, 90, 200 - i * 11 % 200), (4 + i % 10, 6, 30, 40))
    return png(im)


def benchmark_questions(name: str, n: int) -> list[tuple[str, str]]:
    """(item id, official question text) of n long questions of a benchmark file, in file order."""
    bench = get(name)
    rows = bench.load(str(require_shared("benchmarks", FILES[name])))
    picked = []
    for r in rows:
        q = str(r.get("question") or "")
        if len(q.split()) >= 14:
            picked.append((bench.item_id(r), q))
        if len(picked) == n:
            break
    return picked


def test_planted_benchmark_questions_are_removed_and_counted_per_benchmark(tmp_path):
    planted = {name: benchmark_questions(name, 4) for name in FILES}
    rows = []
    for name, items in planted.items():
        for k, (iid, q) in enumerate(items):
            variant = [
                q,  # verbatim
                "  " + q.upper().replace(" ", "   ") + "  ",  # case and whitespace
                f"<image>{q} Answer with a number.",  # image marker and an added instruction
                format_question(f"Consider this problem carefully. {q}"),  # inside a longer prompt, study format
            ][k]
            rows.append({"id": f"planted-{name}-{iid}", "question": variant, "answer": "1", "image_bytes": plain_image(len(rows))})
    for i, q in enumerate(CLEAN * 4):
        rows.append({"id": f"clean-{i}", "question": q, "answer": "2", "image_bytes": plain_image(100 + i)})
    path = write_rows(tmp_path / "train", rows)

    cfg = Decontamination(benchmarks=list(FILES), data={n: str(require_shared("benchmarks", f)) for n, f in FILES.items()})
    questions = {n: {get(n).item_id(r): str(r.get("question")) for r in get(n).load(cfg.data[n])} for n in FILES}
    idx = index_for(cfg)
    ds, report = data.load_rl({"train": str(path)}, exclude=idx.reason)

    kept = set(ds["id"])
    assert kept == {f"clean-{i}" for i in range(len(CLEAN) * 4)}  # every planted row dropped, no clean one
    assert idx.summary()["dropped"] == {name: 4 for name in FILES}
    assert sum(report.skipped.values()) == 16 and report.skipped["contaminated: mathvision"] == 4
    # what was matched is the planted item (or an item of the same benchmark with the same question)
    for name, items in planted.items():
        for iid, q in items:
            bench, hit = idx.match(q, [])
            assert bench == name and (hit == iid or normalize(questions[name][hit]) == normalize(q))


def test_a_source_scale_still_gets_its_rows_when_some_are_dropped(tmp_path):
    """Dropped rows are skipped like malformed ones: the subset is still the first `scale` usable rows."""
    test_rows = synthetic.generate("test", 10)
    rows = [{"question": "What is shown?", "answer": "0", "image_bytes": png(r["image"], "JPEG", 96)} for r in test_rows]
    rows += [{"question": f"Question number {i} about a new picture.", "answer": "1", "image_bytes": plain_image(i)}
             for i in range(30)]
    path = write_rows(tmp_path / "t", rows)
    idx = index_for(Decontamination(benchmarks=["synthetic"], data={"synthetic": "builtin://synthetic/test?n=10"}))
    ds, report = data.load_rl({"train": str(path)}, scale=25, exclude=idx.reason)
    assert len(ds) == 25 and report.used == 25
    assert all(not str(i).startswith("row-") or int(str(i)[4:]) >= 10 for i in ds["id"])


def test_identical_images_are_found_after_reencoding_and_resizing():
    test = synthetic.generate("test", 100)
    idx = Index.build([Reference("synthetic", r["id"], r["question"], [r["image"]]) for r in test])
    found = sum(idx.match("A brand new question about this picture", [png(r["image"], "JPEG", 128)]) is not None
                for r in test)
    assert found >= 95
    assert idx.match("anything", [png(test[3]["image"])]) == ("synthetic", test[3]["id"])


def test_other_drawings_of_the_same_layouts_are_not_flagged():
    """The synthetic train split reuses the test split's 16 layouts in other colours and jitter: no
    training row is the same picture as a test item, and template questions match nothing alone."""
    test = synthetic.generate("test", 200)
    idx = Index.build([Reference("synthetic", r["id"], r["question"], [r["image"]]) for r in test])
    train = synthetic.generate("train", 1000)
    assert sum(idx.match(r["question"], [r["image"]]) is not None for r in train) == 0
    assert not idx.text  # "How many squares are filled? Add 3." has 7 words: no 8-gram, images only


def test_template_text_identifies_no_item_but_a_rare_question_does():
    refs = [Reference("b", str(i), "Subtract all red balls. How many objects are left?") for i in range(5)]
    refs.append(Reference("b", "x", "Subtract all blue cubes. How many objects are left?"))
    idx = Index.build(refs, ngram=8, template_items=5)
    assert idx.match("Subtract all red balls. How many objects are left?", []) is None
    assert idx.match("subtract all BLUE cubes how many objects are left", []) == ("b", "x")
    assert Index.build(refs, template_items=10).match("Subtract all red balls. How many objects are left?", [])


def test_first_benchmark_in_order_takes_the_count():
    q = "The quick brown fox jumps over the lazy dog near the river bank today."
    idx = Index.build([Reference("a", "1", q), Reference("b", "2", q)])
    row = {"prompt": [{"role": "user", "content": format_question(q)}], "image": None}
    assert idx.reason(row) == "contaminated: a" and idx.summary()["dropped"] == {"a": 1, "b": 0}


def test_normalisation_and_keys():
    assert normalize("Find  x.<image> ") == "find x"
    assert normalize(format_question("What is 2+3?")) == "what is 2 3"
    assert text_keys("a b c", 8) == set() and len(text_keys(" ".join("w%d" % i for i in range(10)), 8)) == 3
    im = Image.new("RGB", (64, 64), (250, 250, 250))
    im.paste((30, 30, 200), (0, 32, 64, 64))
    other = im.copy()
    other.paste((200, 30, 30), (0, 32, 64, 64))  # same layout, other colour
    assert fingerprint(im).same_picture(fingerprint(png(im, "JPEG", 100)))
    assert not fingerprint(im).same_picture(fingerprint(other))


def test_an_unreadable_benchmark_stops_with_the_fix(tmp_path):
    cfg = Decontamination(benchmarks=["mathvista"], data={"mathvista": str(tmp_path / "missing.json")})
    with pytest.raises(ContaminationSetupError, match=r"eval\.data\.mathvista.*decontamination\.enabled: false"):
        index_for(cfg)
    assert index_for(Decontamination(enabled=False, benchmarks=["mathvista"])) is None
    assert index_for(None) is None
