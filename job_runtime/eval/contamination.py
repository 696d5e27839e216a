"""The evaluation items a training stage must not train on: the experiment's benchmarks, indexed.

`index_for(cfg.decontaminate)` loads every benchmark of the experiment (``eval.data`` overrides
first, else its default source), takes each item's question (`Benchmark.question`: the text the
eval stage asks, options included) and its images where they can be read, and builds a
`job_runtime.io.decontam.Index`. A benchmark whose items cannot be loaded stops the stage with its
name and the fix (a silent skip would let contaminated rows through); a benchmark whose images are
missing (the question files alone, as in ../shared/benchmarks) is indexed by text only, and
results.json says how many images were indexed.

>>> from job_runtime.contract import Decontamination
>>> idx = index_for(Decontamination(benchmarks=["synthetic"], data={"synthetic": "builtin://synthetic/test?n=8"}))
>>> idx.items["synthetic"], len(idx.pictures)
(8, 8)
>>> index_for(Decontamination(enabled=False, benchmarks=["synthetic"])) is None
True
"""

from __future__ import annotations

import logging
import time

from job_runtime.contract import Decontamination
from job_runtime.eval.benchmarks.base import BenchmarkDataError
from job_runtime.eval.benchmarks.registry import UnknownBenchmark, get
from job_runtime.io.decontam import Index, Reference

log = logging.getLogger(__name__)


class ContaminationSetupError(ValueError):
    """A benchmark's items could not be loaded for decontamination; the message says what to do."""


def references(cfg: Decontamination) -> list[Reference]:
    """Every item of cfg.benchmarks as a Reference (question text, readable images)."""
    out: list[Reference] = []
    for name in cfg.benchmarks:
        try:
            bench = get(name)
            rows = bench.load(cfg.data.get(name) or cfg.data.get(bench.name), None)
        except (UnknownBenchmark, BenchmarkDataError) as e:
            raise ContaminationSetupError(
                f"Decontamination cannot read benchmark '{name}', because {e} Set eval.data.{name} to a readable copy, "
                "or turn decontamination off (spec.decontamination.enabled: false)."
            ) from None
        missing_images = 0
        for row in rows:
            try:
                question = bench.question(row)
            except (KeyError, TypeError, ValueError):
                continue
            try:
                images = bench.images(row)
            except BenchmarkDataError:
                images, missing_images = [], missing_images + 1
            out.append(Reference(bench.name, bench.item_id(row), question, images))
        if missing_images:
            log.info("decontamination: %s: %d of %d items have no readable image; they are matched by text only",
                     bench.name, missing_images, len(rows))
    return out


def index_for(cfg: Decontamination | None) -> Index | None:
    """The index of the experiment's benchmark items, or None when decontamination is off."""
    if cfg is None or not cfg.enabled or not cfg.benchmarks:
        return None
    t0 = time.time()
    idx = Index.build(references(cfg), ngram=cfg.ngram, template_items=cfg.template_items,
                      image_distance=cfg.image_distance)
    log.info("decontamination: indexed %s (%d text keys, %d template keys ignored, %d images) in %.1f s",
             ", ".join(f"{b} {n}" for b, n in idx.items.items()), len(idx.text), idx.templates, len(idx.pictures),
             time.time() - t0)
    return idx
