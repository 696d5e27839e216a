"""Decontamination: training prompts that match an evaluation item of the experiment's benchmarks.

A training row is *contaminated* by a benchmark item when either

- **text**: its normalised question shares a word n-gram (``ngram`` words, default 8) with the
  item's normalised question -- open-r1's rule (huggingface/open-r1 ``scripts/decontaminate.py``,
  after s1's ``data/decontaminate_util.py``: lowercase, collapse whitespace, any shared 8-gram).
  sftrl normalises a little further (Unicode NFKC, punctuation to spaces, the study's format prompt
  and ``<image>`` markers removed). As there, a question shorter than ``ngram`` words has no
  n-gram and is matched by its image only ("Find x." identifies no item). An n-gram shared by
  ``template_items`` or more items of one benchmark is template text ("Subtract all red balls.
  How many objects are left?" asked of many images) and identifies no item by itself either;
- **image**: one of its images is the same picture as one of the item's, by perceptual hash: the
  64-bit DCT hash of the 32x32 grey image (the ``phash`` of the imagehash library: the 8x8
  lowest frequencies against their median) within ``image_distance`` bits (default 6), *and*
  the same 4x4 average colours within `COLOUR_TOLERANCE` (pHash alone ignores colour, so two
  drawings of one layout in different colours would collide). Measured on the synthetic task
  (tests/job_runtime/io/test_decontam.py): JPEG re-encoding and resizing of a test image keep
  296 of 300 copies within these bounds, and none of 1,000 training images (other drawings of
  the same 16 layouts) falls within them. Near hashes are found by multi-index hashing: with
  ``image_distance`` d, the 64 bits split into d + 1 bands, one of which must be equal.

Everything here is pure (bytes and strings in, verdicts out); job_runtime.eval.contamination
loads the benchmark items and the stages apply `Index.reason` to their rows through
``job_runtime.io.data.select(exclude=...)``, which counts every dropped row by benchmark.

>>> idx = Index.build([Reference("mathvista", "7", "What is the area of the shaded triangle in the figure below?")])
>>> idx.match("what is the AREA of the shaded triangle in the figure below", [])
('mathvista', '7')
>>> idx.match("What is the area of the circle?", []) is None
True
>>> idx.match("What is the area of the triangle?", []) is None   # 7 words: no 8-gram
True
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from job_runtime.prompts import FORMAT_PROMPT

DEFAULT_NGRAM = 8  # open-r1's --ngram_size default
DEFAULT_TEMPLATE_ITEMS = 5
HASH_SIZE = 8  # 8x8 low frequencies -> 64 bits (imagehash's default)
HIGHFREQ_FACTOR = 4  # the DCT runs on a 32x32 image (imagehash's default)
COLOUR_GRID = 4
COLOUR_TOLERANCE = 4  # per channel, of 255, on the 4x4 average colours
DEFAULT_IMAGE_DISTANCE = 6  # bits of the 64-bit pHash
_WORD = re.compile(r"[^\w]+", re.UNICODE)


def normalize(text: str) -> str:
    """Question text as compared: format prompt and ``<image>`` removed, NFKC, lowercase, words only.

    >>> normalize("Find  x.<image> You FIRST think")
    'find x you first think'
    >>> from job_runtime.prompts import format_question
    >>> normalize(format_question("What is 2+3?"))
    'what is 2 3'
    """
    text = unicodedata.normalize("NFKC", str(text)).replace(FORMAT_PROMPT, " ").replace("<image>", " ")
    return " ".join(_WORD.sub(" ", text.lower()).replace("_", " ").split())


def text_keys(text: str, n: int = DEFAULT_NGRAM) -> set[str]:
    """The word n-grams of a normalised text (none when it has fewer than n words).

    >>> sorted(text_keys("a b c d", 3)), text_keys("a b", 3), text_keys("", 3)
    (['a b c', 'b c d'], set(), set())
    """
    words = text.split()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


# --- images -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fingerprint:
    """A picture's perceptual hash and coarse colour layout."""

    phash: int
    colours: tuple[int, ...]

    def same_picture(self, other: Fingerprint, max_distance: int = DEFAULT_IMAGE_DISTANCE) -> bool:
        if bin(self.phash ^ other.phash).count("1") > max_distance:
            return False
        return all(abs(a - b) <= COLOUR_TOLERANCE for a, b in zip(self.colours, other.colours))


_DCT_CACHE: dict[int, Any] = {}


def _dct_matrix(n: int):
    import numpy as np

    if n not in _DCT_CACHE:
        k = np.arange(n)[:, None]
        i = np.arange(n)[None, :]
        m = np.cos(np.pi * (2 * i + 1) * k / (2 * n))
        m[0] /= np.sqrt(2)
        _DCT_CACHE[n] = m * np.sqrt(2 / n)
    return _DCT_CACHE[n]


def fingerprint(image: Any) -> Fingerprint:
    """The fingerprint of a PIL image or encoded image bytes (PNG, JPEG, ...).

    >>> from PIL import Image
    >>> from job_runtime.builtin.synthetic import generate
    >>> im = generate("test", 1)[0]["image"]
    >>> a, b = fingerprint(im), fingerprint(im.resize((128, 128)))
    >>> a.same_picture(b), a.same_picture(fingerprint(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    (True, False)
    """
    import numpy as np
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    rgb = image.convert("RGB")
    size = HASH_SIZE * HIGHFREQ_FACTOR
    grey = np.asarray(rgb.convert("L").resize((size, size), Image.Resampling.LANCZOS), dtype=np.float64)
    d = _dct_matrix(size)
    low = np.round((d @ grey @ d.T)[:HASH_SIZE, :HASH_SIZE], 6)  # flat images: exact zeros, not float noise
    bits = (low > np.median(low)).flatten()
    phash = int("".join("1" if b else "0" for b in bits), 2)
    colours = tuple(int(v) for v in np.asarray(rgb.resize((COLOUR_GRID, COLOUR_GRID), Image.Resampling.BOX)).flatten())
    return Fingerprint(phash, colours)


# --- the index ----------------------------------------------------------------------------------


@dataclass
class Reference:
    """One evaluation item: its benchmark, id, question text and images (PIL or bytes; may be none)."""

    benchmark: str
    item_id: str
    question: str
    images: Sequence[Any] = ()


@dataclass
class Index:
    """Benchmark items by text key and by picture; `reason` counts the training rows it rejects."""

    ngram: int = DEFAULT_NGRAM
    image_distance: int = DEFAULT_IMAGE_DISTANCE
    order: list[str] = field(default_factory=list)  # benchmarks in the experiment's order
    text: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    pictures: list[tuple[Fingerprint, str, str]] = field(default_factory=list)
    bands: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (band, bits) -> pictures
    templates: int = 0  # text keys dropped as template text
    items: Counter = field(default_factory=Counter)  # benchmark -> items indexed
    counts: Counter = field(default_factory=Counter)  # benchmark -> training rows rejected

    @classmethod
    def build(cls, refs: Iterable[Reference], ngram: int = DEFAULT_NGRAM, template_items: int = DEFAULT_TEMPLATE_ITEMS,
              image_distance: int = DEFAULT_IMAGE_DISTANCE) -> Index:
        idx = cls(ngram=ngram, image_distance=image_distance)
        by_key: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for r in refs:
            if r.benchmark not in idx.order:
                idx.order.append(r.benchmark)
            idx.items[r.benchmark] += 1
            for key in text_keys(normalize(r.question), ngram):
                by_key[key][r.benchmark].add(r.item_id)
            for im in r.images:
                fp = fingerprint(im)
                for band in idx._bands(fp.phash):
                    idx.bands.setdefault(band, []).append(len(idx.pictures))
                idx.pictures.append((fp, r.benchmark, r.item_id))
        for key, per_bench in by_key.items():
            if any(len(ids) >= template_items for ids in per_bench.values()):
                idx.templates += 1
                continue
            idx.text[key] = [(b, i) for b in idx.order if b in per_bench for i in sorted(per_bench[b])]
        return idx

    def _bands(self, phash: int) -> list[tuple[int, int]]:
        """(band, bits) of a hash: d + 1 bands, so two hashes within d bits agree on one of them."""
        n = self.image_distance + 1
        bounds = [HASH_SIZE * HASH_SIZE * k // n for k in range(n + 1)]
        return [(k, (phash >> lo) & ((1 << (hi - lo)) - 1)) for k, (lo, hi) in enumerate(zip(bounds, bounds[1:]))]

    def _picture_hits(self, fp: Fingerprint) -> list[tuple[str, str]]:
        seen = {i for band in self._bands(fp.phash) for i in self.bands.get(band, ())}
        return [(self.pictures[i][1], self.pictures[i][2]) for i in sorted(seen)
                if fp.same_picture(self.pictures[i][0], self.image_distance)]

    def match(self, question: str, images: Sequence[Any]) -> tuple[str, str] | None:
        """(benchmark, item id) of the item the prompt matches best, or None.

        Best: the same picture first, then the most shared text keys; ties go to the benchmark
        listed first, then the smallest id. Each dropped row counts for that one item's benchmark.
        """
        score: Counter = Counter()
        for key in text_keys(normalize(question), self.ngram):
            for hit in self.text.get(key, ()):
                score[hit] += 1
        if self.pictures:
            for im in images:
                for hit in self._picture_hits(fingerprint(im)):
                    score[hit] += 1_000_000
        if not score:
            return None
        return min(score, key=lambda h: (-score[h], self.order.index(h[0]), h[1]))

    def reason(self, row: dict[str, Any]) -> str | None:
        """For io.data.select(exclude=...): why a converted training row is dropped, or None.

        Reads the row's user text (``prompt`` messages or ``question``) and its ``images``/``image``.
        """
        hit = self.match(row_question(row), row_images(row))
        if hit is None:
            return None
        self.counts[hit[0]] += 1
        return f"contaminated: {hit[0]}"

    def summary(self) -> dict[str, Any]:
        """What results.json records: rows dropped per benchmark, and what was indexed."""
        return {
            "dropped": {b: self.counts.get(b, 0) for b in self.order},
            "items": dict(self.items),
            "ngram": self.ngram,
            "template_keys": self.templates,
            "images_indexed": len(self.pictures),
        }


def row_question(row: dict[str, Any]) -> str:
    """The user text of a converted row (TRL messages) or a raw one (``question``)."""
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        parts = []
        for m in prompt:
            if isinstance(m, dict) and m.get("role") == "user":
                c = m.get("content")
                parts.append(c if isinstance(c, str) else " ".join(p.get("text", "") for p in c or [] if isinstance(p, dict)))
        return " ".join(parts)
    return str(row.get("question") or prompt or "")


def row_images(row: dict[str, Any]) -> list[Any]:
    value = row.get("images", row.get("image"))
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
