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
    state: str  # done | failed | incomplete | started | waiting (controller.status)
    reason: str | None = None  # failed: the error line; incomplete: the file that does not match
    log: str | None = None  # failed: where the attempt's log is


@dataclass
class DataUse:
    """What a finished training stage read: rows used of those available, and skipped rows by reason."""

    run: str
    stage: str
    kind: str
    source: str
    total: int
    used: int
    skipped: dict[str, int]


@dataclass
class Curve:
    """Metrics of one RL stage (complete or still running)."""

    run: str
    stage: str
    complete: bool
    rows: list[dict[str, Any]]
    state: str = ""  # done | failed | started (controller.status); "" when unknown


@dataclass
class ExperimentData:
    experiment: str
    root: str
    benchmarks: list[str]
    runs: list[RunData]
    stages: dict[str, list[StageState]]  # run -> its stages in order (train..., eval)
    curves: list[Curve]
    issues: list[str] = field(default_factory=list)
    data: list[DataUse] = field(default_factory=list)
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
    data: list[DataUse] = field(default_factory=list)
    pipeline: Pipeline = field(default_factory=Pipeline)

    @property
    def n_complete(self) -> int:
        return sum(r.complete for r in self.runs)

    @property
    def failed_runs(self) -> set[str]:
        """Runs with a failed stage: their cells read 'failed', not 'pending'."""
        return {run for run, st in self.stages.items() if any(s.state == "failed" for s in st)}

    @property
    def failed_stages(self) -> dict[str, tuple[str, StageState]]:
        """stage id -> (first run using it, its state) for every failed stage."""
        out: dict[str, tuple[str, StageState]] = {}
        for run, st in self.stages.items():
            for s in st:
                if s.state == "failed" and s.id not in out:
                    out[s.id] = (run, s)
        return out


@dataclass
class ReportResult:
    out: str  # where the report was written (path or URI)
    files: list[str]  # relative names written
    main_text: str
    report: Report

    @property
    def complete(self) -> bool:
        return self.report.n_complete == len(self.report.runs)
