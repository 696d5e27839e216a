"""The report's data: what ``report.load`` reads and computes and ``report.render`` draws.

Plain dataclasses, no I/O and no logic beyond derived properties, so the loader and the renderer
both depend on this module and never on each other's internals (no import circle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.report.pipeline import Pipeline
from controller.report.stats import PairResult, ReportConfig, RunData, Table


@dataclass
class StageState:
    id: str
    kind: str
    state: str  # done | started | waiting


@dataclass
class Curve:
    """Metrics of one RL stage (complete or still running)."""

    run: str
    stage: str
    complete: bool
    rows: list[dict[str, Any]]


@dataclass
class ExperimentData:
    experiment: str
    root: str
    benchmarks: list[str]
    runs: list[RunData]
    stages: dict[str, list[StageState]]  # run -> its stages in order (train..., eval)
    curves: list[Curve]
    issues: list[str] = field(default_factory=list)
    pipeline: Pipeline = field(default_factory=Pipeline)  # distillation, decontamination, probes


@dataclass
class Report:
    experiment: str
    root: str
    generated: str
    cfg: ReportConfig
    mm_cols: list[str]
    main: Table
    transfer: Table
    pairs: list[PairResult]
    curves: list[Curve]
    stages: dict[str, list[StageState]]
    runs: list[RunData]
    issues: list[str]
    pipeline: Pipeline = field(default_factory=Pipeline)

    @property
    def n_complete(self) -> int:
        return sum(r.complete for r in self.runs)


@dataclass
class ReportResult:
    out: str  # where the report was written (path or URI)
    files: list[str]  # relative names written
    main_text: str
    report: Report

    @property
    def complete(self) -> bool:
        return self.report.n_complete == len(self.report.runs)
