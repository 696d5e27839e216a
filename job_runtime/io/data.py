"""Training data for the sft and rl stages: the same questions, as traces (SFT) or answers (RL).

Sources (``cfg.data['train']`` / ``cfg.data['heldout']``):

- ``builtin://synthetic/{sft,rl,test}[?n=N&seed=S]`` -- the offline synthetic task;
- a local path, ``file://`` or ``s3://`` URI of a ``.parquet``, ``.jsonl`` or ``.json`` file, or
  of a folder of them (read in name order);
- a Hugging Face dataset: ``hf://org/name[?split=train&config=c]`` or a bare ``org/name``.

Columns (the first present name wins):

========  ===================================================================================
image     ``images`` (list) or ``image``: PIL, bytes, ``{"bytes", "path"}`` (HF parquet), or a
          path/URI (relative paths are resolved against the data file's folder)
question  ``question``, ``problem``, ``query``, ``prompt`` (a ``<image>`` marker is removed: the
          image goes first, as in Qwen2-VL); the EasyR1 format prompt is appended unless present
trace     SFT only: ``trace``, ``response``, ``output``, ``completion``, ``solution``, or a
          ``messages``/``conversations`` list (OpenAI or ShareGPT style; the last assistant turn
          is the completion, everything before it the prompt)
answer    RL only: ``answer``, ``ground_truth``, ``gold``; optional ``choices``/``options``
========  ===================================================================================

Subsets are nested and independent of the run seed: rows are visited in a fixed shuffle (seeded
by DATA_SEED) and the first ``scale`` usable rows are taken, so the 2K subset lies inside the 20K
one. The synthetic task needs no shuffle (its rows are i.i.d. draws, and ``generate`` is prefix
stable), so its first ``scale`` rows are taken. A malformed row (missing field, unreadable image)
is counted, reported and skipped, never fatal; a scale larger than the usable rows is an error.

>>> ds = sft_dataset({"train": "builtin://synthetic/sft"}, scale=4)
>>> sorted(ds.column_names), ds[0]["completion"][0]["content"][:7]
(['completion', 'id', 'images', 'prompt'], '<think>')
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from job_runtime.io import storage
from job_runtime.prompts import FORMAT_PROMPT, format_question

log = logging.getLogger(__name__)

DATA_SEED = 1234  # fixed for every run: nested subsets are the same across seeds and methods
IMAGE_KEYS = ("images", "image")
QUESTION_KEYS = ("question", "problem", "query", "prompt")
TRACE_KEYS = ("trace", "response", "output", "completion", "solution")
MESSAGE_KEYS = ("messages", "conversations")
ANSWER_KEYS = ("answer", "ground_truth", "gold")
CHOICE_KEYS = ("choices", "options")
_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class DataError(ValueError):
    """Unusable training data; the message names the source and what to do."""


class RowError(ValueError):
    """One malformed row (counted and skipped). ``reason`` is a fixed phrase, so skipped rows add up
    by reason; ``detail`` (a file name, a line number) goes only into the examples."""

    def __init__(self, reason: str, detail: str | None = None):
        super().__init__(reason if detail is None else f"{reason} ({detail})")
        self.reason, self.detail = reason, detail


@dataclass
class DataReport:
    """What loading a source did: rows seen, used, and skipped by reason."""

    source: str
    total: int = 0
    used: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def skip(self, index: int, why: str, detail: str | None = None) -> None:
        self.skipped[why] += 1
        if len(self.examples) < 5:
            self.examples.append(f"row {index}: {why}" + (f" ({detail})" if detail else ""))

    def summary(self) -> str:
        """One line for the log and the manifest.

        >>> r = DataReport("x.jsonl", total=3, used=2); r.skip(1, "no answer"); r.summary()
        'x.jsonl: used 2 of 3 rows; skipped 1 (no answer: 1; e.g. row 1: no answer)'
        """
        s = f"{self.source}: used {self.used} of {self.total} rows"
        if self.skipped:
            n = sum(self.skipped.values())
            why = "; ".join(f"{k}: {v}" for k, v in self.skipped.most_common())
            s += f"; skipped {n} ({why}; e.g. {self.examples[0]})"
        return s

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "total": self.total, "used": self.used, "skipped": dict(self.skipped)}


# --- reading raw rows ---------------------------------------------------------------------------


def _is_builtin(uri: str) -> bool:
    return uri.startswith("builtin://")


def _looks_like_hf(uri: str) -> bool:
    if uri.startswith("hf://"):
        return True
    if "://" in uri or uri.startswith(("/", ".", "~")) or Path(uri).exists():
        return False
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", uri))


def _read_file(uri: str) -> list[dict[str, Any]]:
    data = storage.read_bytes(uri)
    name = uri.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)).to_pylist()
    if name.endswith(".jsonl"):
        rows = []
        for i, line in enumerate(data.decode("utf-8").splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    rows.append({"_error": "not JSON", "_detail": f"line {i + 1}: {e.msg}"})
        return rows
    if name.endswith(".json"):
        obj = json.loads(data)
        return obj if isinstance(obj, list) else obj.get("data") or obj.get("rows") or []
    raise DataError(f"Data file {uri} has an unsupported type, because only .parquet, .jsonl and .json are read. "
                    "Convert it or point at a folder of such files.")


def _read_hf(uri: str) -> list[dict[str, Any]]:
    from urllib.parse import parse_qs, urlparse

    parsed = urlparse(uri if uri.startswith("hf://") else f"hf://{uri}")
    name = (parsed.netloc + parsed.path).strip("/")
    q = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    try:
        import datasets

        ds = datasets.load_dataset(name, q.get("config"), split=q.get("split", "train"))
    except Exception as e:  # noqa: BLE001 - offline, missing split, bad id: all reported the same way
        raise DataError(
            f"Dataset '{name}' could not be loaded from the Hugging Face hub, because {type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]} (there may be no hub access here). Export it to parquet and "
            "pass a local path or s3:// URI."
        ) from None
    return list(ds)


def read_rows(uri: str) -> tuple[list[dict[str, Any]], str]:
    """(raw rows, base URI that relative image paths resolve against) of a non-builtin source."""
    if _looks_like_hf(uri):
        return _read_hf(uri), ""
    uri = storage.normalize(uri)
    if storage.is_local(uri) and storage.local_path(uri).is_dir() or not storage.exists(uri):
        rels = [r for r in storage.list_prefix(uri) if r.lower().endswith((".parquet", ".jsonl", ".json"))]
        if not rels:
            raise DataError(f"Data source {uri} holds no .parquet/.jsonl/.json file, because it is empty or "
                            "does not exist. Check the data URI in the experiment file.")
        rows: list[dict[str, Any]] = []
        for rel in rels:
            for r in _read_file(storage.join(uri, rel)):
                rows.append({**r, "_base": storage.join(uri, str(Path(rel).parent))} if isinstance(r, dict) else r)
        return rows, uri
    return _read_file(uri), uri.rsplit("/", 1)[0]


# --- one row -------------------------------------------------------------------------------------


def _first(row: dict[str, Any], keys: Iterable[str]) -> Any:
    for k in keys:
        if row.get(k) not in (None, "", []):
            return row[k]
    return None


def _image_bytes(value: Any, base: str) -> bytes:
    from PIL import Image

    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        uri = value if "://" in value or value.startswith("/") or not base else storage.join(base, value)
        try:
            return storage.read_bytes(storage.normalize(uri))
        except storage.StorageError:
            raise RowError("image file not found", value) from None
    raise RowError("no image")


def _check_image(data: bytes) -> bytes:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (64, 64))  # JPEG: decode at reduced size; still reads every byte
            im.load()
    except Exception:  # noqa: BLE001 - any decoder error means the same thing
        raise RowError("unreadable image") from None
    return data


def _images(row: dict[str, Any], base: str) -> list[bytes]:
    value = _first(row, IMAGE_KEYS)
    if value is None:
        raise RowError("no image")
    values = value if isinstance(value, (list, tuple)) else [value]
    return [_check_image(_image_bytes(v, base)) for v in values]


def _clean_question(text: Any) -> str:
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = str(text)  # a question may be just a number (e.g. "12345" read by a parquet or JSON reader)
    if not isinstance(text, str) or not text.replace("<image>", "").strip():
        raise RowError("no question")
    text = text.replace("<image>", "").strip()
    return text if FORMAT_PROMPT in text else format_question(text)


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowError("messages is not a list")
    out = []
    for m in value:
        if not isinstance(m, dict):
            raise RowError("a message is not an object")
        role = _ROLE.get(str(m.get("role", m.get("from", ""))).lower())
        content = m.get("content", m.get("value"))
        if role is None or not isinstance(content, str):
            raise RowError("a message has no role or no text content")
        out.append({"role": role, "content": content.replace("<image>", "").strip()})
    return out


def sft_row(row: dict[str, Any], base: str = "") -> dict[str, Any]:
    """A raw row as TRL prompt-completion: {images, prompt, completion, id}. Raises RowError.

    >>> r = sft_row({"image": b"x", "question": "Q?", "trace": "<think>t</think> \\\\boxed{1}"})  # doctest: +SKIP
    """
    if "_error" in row:
        raise RowError(row["_error"], row.get("_detail"))
    images = _images(row, row.get("_base", base))
    msgs = _first(row, MESSAGE_KEYS)
    if msgs is not None:
        msgs = _messages(msgs)
        if msgs[-1]["role"] != "assistant" or not msgs[-1]["content"]:
            raise RowError("the last message is not an assistant answer")
        prompt, completion = msgs[:-1], msgs[-1:]
        if not any(m["role"] == "user" and m["content"] for m in prompt):
            raise RowError("no user message")
    else:
        trace = _first(row, TRACE_KEYS)
        if not isinstance(trace, str) or not trace.strip():
            raise RowError("no trace")
        prompt = [{"role": "user", "content": _clean_question(_first(row, QUESTION_KEYS))}]
        completion = [{"role": "assistant", "content": trace.strip()}]
    return {"images": images, "prompt": prompt, "completion": completion, "id": str(row.get("id", ""))}


def rl_row(row: dict[str, Any], base: str = "") -> dict[str, Any]:
    """A raw row as TRL GRPO input: {image, prompt, answer, choices, id}. Raises RowError."""
    if "_error" in row:
        raise RowError(row["_error"], row.get("_detail"))
    images = _images(row, row.get("_base", base))
    answer = _first(row, ANSWER_KEYS)
    if answer is None or not str(answer).strip():
        raise RowError("no answer")
    choices = _first(row, CHOICE_KEYS)
    if choices is not None and not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
        raise RowError("choices is not a list of strings")
    return {
        "image": images[0],
        "prompt": [{"role": "user", "content": _clean_question(_first(row, QUESTION_KEYS))}],
        "answer": str(answer).strip(),
        "choices": choices,
        "id": str(row.get("id", "")),
    }


# --- subsets -------------------------------------------------------------------------------------


def subset_order(n: int, seed: int = DATA_SEED) -> list[int]:
    """The fixed visiting order of n rows; prefixes give the nested subsets.

    >>> subset_order(5) == subset_order(5) and sorted(subset_order(5)) == [0, 1, 2, 3, 4]
    True
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _synthetic_raw(uri: str, want: int | None, role: str) -> list[dict[str, Any]]:
    from job_runtime.builtin import synthetic

    split, n, seed = synthetic.parse_uri(uri)
    if "n=" not in uri and want is not None:
        n = want  # no explicit size: generate exactly what is asked (rows are prefix-stable)
    rows = synthetic.generate(split, min(n, want) if want is not None else n, seed)
    for r in rows:
        r["_available"] = n
    return rows


Exclude = Callable[[dict[str, Any]], "str | None"]  # converted row -> why it is dropped, or None


def select(uri: str, convert: Callable[[dict[str, Any], str], dict[str, Any]], scale: int | None,
           what: str = "train", exclude: Exclude | None = None) -> tuple[list[dict[str, Any]], DataReport]:
    """The first `scale` usable rows of a source in the fixed order, converted, with a report.

    ``exclude`` (decontamination: job_runtime.io.decontam.Index.reason) drops a converted row with a
    reason, counted in the report like a malformed row, so the subset still has `scale` rows.
    """
    if scale is not None and scale < 1:
        raise DataError(f"Data scale {scale} is not positive. Use a scale of 1 or more rows.")
    if _is_builtin(uri):
        try:
            # decontamination may drop rows: draw a margin beyond `scale` (rows are prefix-stable)
            raw = _synthetic_raw(uri, scale if exclude is None or scale is None else 2 * scale, what)
        except ValueError as e:
            raise DataError(str(e)) from None
        available, base, order = (raw[0]["_available"] if raw else 0), "", list(range(len(raw)))
    else:
        raw, base = read_rows(uri)
        available, order = len(raw), subset_order(len(raw))
    report = DataReport(source=uri, total=available)
    out = []
    for i in order:
        if scale is not None and len(out) >= scale:
            break
        row = raw[i]
        try:
            if not isinstance(row, dict):
                raise RowError("not an object")
            converted = convert(row, base)
            why = exclude(converted) if exclude is not None else None
            if why:
                raise RowError(why)
            out.append(converted)
        except RowError as e:
            report.skip(i, e.reason, e.detail)
    report.used = len(out)
    if report.skipped:
        log.warning("%s", report.summary())
    else:
        log.info("%s", report.summary())
    if scale is not None and len(out) < scale:
        raise DataError(
            f"Data scale {scale} exceeds the {len(out)} usable rows of {uri} ({report.summary()}). "
            "Lower the experiment's scales, or give the source more rows"
            + (" (?n=... on a builtin://synthetic URI)." if _is_builtin(uri) else ".")
        )
    if not out:
        raise DataError(f"Data source {uri} has no usable rows ({report.summary()}). Fix the rows or the URI.")
    return out, report


def _source(data: dict[str, str] | str, role: str) -> str:
    if isinstance(data, str):
        return data
    if role not in data:
        raise DataError(f"The stage has no data.{role} URI, because the stage config lists only {sorted(data)}. "
                        f"Set data.{role} for this stage.")
    return data[role]


# --- datasets for TRL ------------------------------------------------------------------------------


def _dataset(rows: list[dict[str, Any]], kind: str):
    import datasets
    from datasets import Features, Image, List, Value

    msg = List({"role": Value("string"), "content": Value("string")})
    if kind == "sft":
        features = Features({"images": List(Image()), "prompt": msg, "completion": msg, "id": Value("string")})
        rows = [{**r, "images": [{"bytes": b, "path": None} for b in r["images"]]} for r in rows]
    else:
        cols = {"image": Image(), "prompt": msg, "answer": Value("string"), "id": Value("string")}
        if any(r["choices"] for r in rows):
            cols["choices"] = List(Value("string"))
        features = Features(cols)
        rows = [{k: ({"bytes": v, "path": None} if k == "image" else v) for k, v in r.items() if k in cols}
                for r in rows]
    return datasets.Dataset.from_list(rows, features=features)


def load_sft(data: dict[str, str] | str, scale: int | None = None, exclude: Exclude | None = None):
    """(TRL dataset of {images, prompt, completion, id}, DataReport) from data['train']."""
    rows, report = select(_source(data, "train"), sft_row, scale, "train", exclude)
    return _dataset(rows, "sft"), report


def load_rl(data: dict[str, str] | str, scale: int | None = None, exclude: Exclude | None = None):
    """(TRL dataset of {image, prompt, answer, [choices], id}, DataReport) from data['train']."""
    rows, report = select(_source(data, "train"), rl_row, scale, "train", exclude)
    return _dataset(rows, "rl"), report


def sft_dataset(data: dict[str, str] | str, scale: int | None = None, seed: int = 0):
    """The SFT training set. `seed` (the run seed) does not change the subset, by design."""
    return load_sft(data, scale)[0]


def rl_dataset(data: dict[str, str] | str, scale: int | None = None, seed: int = 0, exclude: Exclude | None = None):
    """The RL training prompts. `seed` (the run seed) does not change the subset, by design."""
    return load_rl(data, scale, exclude)[0]


def fit_images(dataset, min_pixels: int | None = None, max_pixels: int | None = None, qwen2vl_guards: bool = False):
    """The dataset with its images resized into [min_pixels, max_pixels] as rows are read
    (`job_runtime.io.images`: EasyR1's and LLaMA-Factory's rule); unchanged without bounds."""
    if min_pixels is None and max_pixels is None and not qwen2vl_guards:
        return dataset
    from functools import partial

    from job_runtime.io import images

    key = "images" if "images" in dataset.column_names else "image"
    return dataset.with_transform(partial(images.fit_batch, keys=(key,), min_pixels=min_pixels, max_pixels=max_pixels,
                                          qwen2vl_guards=qwen2vl_guards))


def heldout_rows(data: dict[str, str] | str, n: int, min_pixels: int | None = None,
                 max_pixels: int | None = None) -> list[dict[str, Any]]:
    """The first n usable rows of data['heldout'] as {image (PIL, fitted to the pixel bounds), prompt,
    answer, choices, id}.

    Fewer rows than n is fine here (a warning), unlike a training scale.
    """
    from job_runtime.io.images import fit

    from PIL import Image

    uri = _source(data, "heldout")
    try:
        rows, _ = select(uri, rl_row, n, "heldout")
    except DataError as e:
        if "exceeds" not in str(e):
            raise
        log.warning("held-out set smaller than %d rows: %s", n, e)
        rows, _ = select(uri, rl_row, None, "heldout")
    for r in rows:
        r["image"] = fit(Image.open(io.BytesIO(r["image"])), min_pixels, max_pixels)
    return rows
