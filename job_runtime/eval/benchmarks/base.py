"""What every benchmark shares: the Benchmark base class, data loading, images, aggregation.

A benchmark is a subclass of `Benchmark` that knows its Hugging Face dataset (id, config, split),
how to build its prompt (the study's format prompt or its own official one), how to score one
response on one of its official rows (`score`), and how to aggregate verdicts into its official
headline metric and breakdowns (`aggregate`). Rows are the benchmark's own rows, with its
official field names, wherever they come from: the hub, a local .json/.jsonl/.parquet/.csv/.tsv
file or folder, or an s3:// object (downloaded through job_runtime.io.storage).

>>> class Toy(Benchmark):
...     name, id_field, answer_field = "toy", "id", "answer"
...     def question(self, row): return row["q"]
>>> toy = Toy()
>>> v = toy.score({"id": "1", "q": "1+1?", "answer": "2"}, "\\\\boxed{2}")
>>> v.correct, v.extracted, toy.aggregate([{"id": "1"}], [v])
(True, '2', (1.0, {'correct': 1, 'total': 1}))
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from job_runtime.io import scratch, storage
from job_runtime.eval.answers import extract_answer, is_correct
from job_runtime.prompts import format_question


SCORER = {"name": "sftrl-rules", "version": "1.1"}
PROTOCOLS = ("official", "strict")  # job_runtime.contract.EvalParams.protocol
STYLES = ("study", "official")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".tsv", ".csv")
IMAGE_FIELDS = ("decoded_image", "image", "images", "image_path", "filename")


class BenchmarkDataError(ValueError):
    """A benchmark's data is missing or malformed; the message names the benchmark and the fix."""


@dataclass
class Verdict:
    """The scoring of one response: what was extracted, whether it is right, and by what."""

    extracted: str | None
    correct: bool
    method: str = "rules"


class Benchmark:
    """Base class; subclasses set the class attributes and override what differs."""

    name: str = ""
    hf_id: str = ""
    hf_config: str | None = None
    split: str = "test"
    metric: str = "accuracy"
    id_field: str = "id"
    answer_field: str = "answer"
    required: tuple[str, ...] = ()  # fields a row must have (besides id and answer) to be scored
    default_limit: int | None = None

    # --- data ------------------------------------------------------------------------------
    def load(self, source: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The benchmark's rows from `source` (local path, s3:// URI, HF id) or the hub."""
        rows, base = load_rows(self, source)
        self.base_dir = base
        limit = limit or self.default_limit
        rows = self.prepare(rows[:limit] if limit else rows)
        return rows

    def prepare(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Hook to expand or normalise loaded rows (MMBench's circular copies)."""
        return rows

    def validate(self, row: dict[str, Any]) -> str | None:
        """Why a row cannot be scored (a missing field), or None."""
        if not isinstance(row, dict):
            return "it is not a JSON object"
        for f in (self.id_field, self.answer_field, *self.required):
            if row.get(f) is None:
                return f"it has no '{f}' field"
        return None

    def item_id(self, row: dict[str, Any]) -> str:
        return str(row[self.id_field])

    def gold(self, row: dict[str, Any]) -> str:
        return str(row[self.answer_field])

    def choices(self, row: dict[str, Any]) -> list[str] | None:
        return None

    # --- prompts ---------------------------------------------------------------------------
    def question(self, row: dict[str, Any]) -> str:
        """The question with its options, as the study's prompt shows it."""
        return str(row["question"])

    def official_prompt(self, row: dict[str, Any]) -> str:
        return self.question(row)

    def prompt(self, row: dict[str, Any], style: str = "study") -> str:
        """The text prompt: the study's format prompt by default, or the benchmark's own."""
        if style == "official":
            return self.official_prompt(row)
        if style != "study":
            raise ValueError(f"Prompt style '{style}' is unknown, because only {STYLES} exist. Set eval.prompt to one of them.")
        return format_question(self.question(row))

    def images(self, row: dict[str, Any]) -> list[Any]:
        """PIL images of a row (none for text benchmarks)."""
        return row_images(row, getattr(self, "base_dir", None), self.name)

    # --- scoring ---------------------------------------------------------------------------
    def verdict(self, row: dict[str, Any], response: str, protocol: str = "official") -> Verdict:
        """One response scored under a protocol: 'official' reproduces the benchmark's own pipeline,
        'strict' is sftrl's robust scorer (`score`). Benchmarks whose official rules are already
        judge-free and unambiguous score both the same way; MathVista and MathVision differ."""
        check_protocol(protocol)
        return self.score(row, response)

    def score(self, row: dict[str, Any], response: str) -> Verdict:
        """Default: extract the final answer and compare it with the gold answer."""
        pred = extract_answer(response, lenient=True)
        return Verdict(pred, is_correct(pred, self.gold(row), self.choices(row)))

    def aggregate(self, rows: list[dict[str, Any]], verdicts: list[Verdict]) -> tuple[float, dict[str, Any]]:
        """(headline 0..1, breakdown): accuracy by default."""
        correct = sum(v.correct for v in verdicts)
        return (correct / len(verdicts) if verdicts else 0.0), {"correct": correct, "total": len(verdicts)}


def check_protocol(protocol: str) -> None:
    """Refuse an unknown scoring protocol with the fix."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"Scoring protocol '{protocol}' is unknown, because only {', '.join(PROTOCOLS)} exist. "
                         f"Set eval.protocol (or --protocol) to one of them.")


# --- aggregation helpers ---------------------------------------------------------------------


def accuracy_by(rows: Iterable[dict[str, Any]], verdicts: Iterable[Verdict], key) -> dict[str, dict[str, Any]]:
    """Accuracy per value of key(row) (a field name or a function; list values count in each).

    >>> accuracy_by([{"s": "a"}, {"s": "a"}, {"s": "b"}], [Verdict("1", True), Verdict("2", False), Verdict("3", True)], "s")
    {'a': {'accuracy': 0.5, 'correct': 1, 'total': 2}, 'b': {'accuracy': 1.0, 'correct': 1, 'total': 1}}
    """
    get = key if callable(key) else (lambda r: r.get(key))
    tally: dict[str, list[int]] = {}
    for row, v in zip(rows, verdicts):
        vals = get(row)
        for val in vals if isinstance(vals, (list, tuple)) else [vals]:
            if val is None:
                continue
            t = tally.setdefault(str(val), [0, 0])
            t[0] += int(v.correct)
            t[1] += 1
    return {k: {"accuracy": c / n, "correct": c, "total": n} for k, (c, n) in sorted(tally.items())}


# --- loading ---------------------------------------------------------------------------------


def _data_error(bench: Benchmark, why: str) -> BenchmarkDataError:
    hub = f"{bench.hf_id}" + (f" (config {bench.hf_config})" if bench.hf_config else "") + f", split {bench.split}"
    return BenchmarkDataError(
        f"Benchmark '{bench.name}' has no data, because {why}. Set eval.data.{bench.name} to a local file or "
        f"folder, an s3:// URI or a Hugging Face dataset id holding its official rows (hub: {hub})."
    )


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a .json (list, or dict of rows), .jsonl, .parquet, .csv or .tsv file."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {i} is not JSON ({e.msg}). Fix or remove that line.") from None
        return rows
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return [dict(v, _key=k) if isinstance(v, dict) else {"_key": k, "value": v} for k, v in data.items()]
        return list(data)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix in (".csv", ".tsv"):
        import csv

        csv.field_size_limit(1 << 30)
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    raise ValueError(f"{path} has the unsupported suffix '{suffix}'. Use one of {', '.join(DATA_SUFFIXES)}.")


def _find_data_file(folder: Path, bench: Benchmark) -> Path:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    if not files:
        raise _data_error(bench, f"the folder {folder} holds no {'/'.join(DATA_SUFFIXES)} file")
    for hint in (bench.split, bench.name):
        named = [p for p in files if hint and hint.lower() in p.name.lower()]
        if named:
            return named[0]
    return files[0]


def load_rows(bench: Benchmark, source: str | None) -> tuple[list[dict[str, Any]], Path | None]:
    """(rows, folder images are relative to) from a path, an s3:// URI, a HF id, or the hub."""
    if source and source.startswith("s3://"):
        tmp = scratch.mkdtemp(bench.name)
        name = source.rstrip("/").rsplit("/", 1)[-1]
        if Path(name).suffix.lower() in DATA_SUFFIXES and storage.exists(source):
            storage.download_file(source, tmp / name)
            return read_table(tmp / name), tmp
        storage.download_dir(source, tmp)
        return read_table(_find_data_file(tmp, bench)), tmp
    if source:
        path = storage.local_path(source) if source.startswith("file://") else Path(source).expanduser()
        if path.is_file():
            try:
                return read_table(path), path.parent
            except (ValueError, OSError) as e:
                raise _data_error(bench, f"{path} cannot be read: {e}") from None
        if path.is_dir():
            return read_table(_find_data_file(path, bench)), path
        looks_local = source.startswith(("/", ".", "~", "file://")) or Path(source).suffix.lower() in DATA_SUFFIXES
        if looks_local or source.count("/") != 1:
            raise _data_error(bench, f"{source} does not exist")
    return _load_hub(bench, source or bench.hf_id), None


def _load_hub(bench: Benchmark, hf_id: str) -> list[dict[str, Any]]:
    try:
        import datasets

        ds = datasets.load_dataset(hf_id, bench.hf_config, split=bench.split)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _data_error(bench, f"loading {hf_id} from the Hugging Face hub failed ({first[:200]})") from None
    return [dict(r) for r in ds]


# --- images ----------------------------------------------------------------------------------


def _open_image(value: Any, base: Path | None, bench: str) -> Any | None:
    from PIL import Image

    if value is None or value == "":
        return None
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
        return _open_image(value.get("path"), base, bench)
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value)).convert("RGB")
    if isinstance(value, str):
        if len(value) > 1024:  # a base64 image (MMBench's TSV), not a path
            try:
                return Image.open(io.BytesIO(base64.b64decode(value))).convert("RGB")
            except Exception:  # noqa: BLE001 - reported below
                value = value[:40] + "..."
        candidates = [Path(value)] + ([base / value, base / "images" / Path(value).name] if base else [])
        for c in candidates:
            if c.is_file():
                return Image.open(c).convert("RGB")
        raise BenchmarkDataError(
            f"Benchmark '{bench}' names the image '{value}', but it is not under {base or 'the working folder'}. "
            f"Set eval.data.{bench} to a folder holding the rows file and its images (or to the HF dataset)."
        )
    return None


def row_images(row: dict[str, Any], base: Path | None, bench: str) -> list[Any]:
    """The images of a row, from the first image field present (PIL, bytes, base64 or a path)."""
    for field in IMAGE_FIELDS:
        value = row.get(field)
        if value is None or value == "" or value == []:
            continue
        values = value if isinstance(value, list) else [value]
        out = [img for v in values if (img := _open_image(v, base, bench)) is not None]
        if out:
            return out
    return []


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row without image payloads (for samples.jsonl)."""
    out = {}
    for k, v in row.items():
        if k in IMAGE_FIELDS and not isinstance(v, str):
            continue
        if isinstance(v, str) and len(v) > 2000 and k in IMAGE_FIELDS:
            continue
        if isinstance(v, (bytes, bytearray)):
            continue
        out[k] = v
    return out
