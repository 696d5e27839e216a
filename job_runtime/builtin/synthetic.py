"""A synthetic visual-arithmetic task with verifiable answers, drawn offline with PIL.

Each item is a 64x64 image of a 2x2 grid; some of the four squares are filled with a colour, the
others are only outlined. The question asks for the number of filled squares plus a number given
in the text, so the answer needs both the image and the text::

    image: [■ □]      question: "How many squares are filled? Add 5."
           [□ ■]      answer:   "7"   (addends 0..5, so answers are 0..9)
    trace: "<think>2 filled. 2 + 5 = 7</think> \\boxed{7}"   (19 tokens of the tiny model)

The trace is built from the drawing itself, and `verify_trace` checks it, so SFT trains on
verified reasoning traces and RL on the same questions with their answers.

Splits. ``train`` (aliases ``sft`` and ``rl``: SFT and RL train on the same questions) and
``test`` are disjoint by construction: every (fill pattern, addend, fill colour) triple belongs
to exactly one split (a fixed quarter of the 768 triples is test-only, see `is_test_item`), so
no test item appears in training, while every (count, addend) sum is seen in training. The
number of filled squares is uniform over 0..4, so ignoring the image scores about 20%.

Rows are a pure function of (split, seed, index): the first n rows of ``generate(split, 2n, s)``
are ``generate(split, n, s)``, which makes data-scale subsets nested.

URIs: ``builtin://synthetic/sft``, ``builtin://synthetic/rl``, ``builtin://synthetic/test``, with
optional query ``?n=<rows>&seed=<seed>`` (defaults: DEFAULT_SIZES, seed 0).
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any
from urllib.parse import parse_qs, urlparse

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
ADDENDS = tuple(range(6))
QUESTION = "How many squares are filled? Add {a}."
SPLITS = ("train", "test")
SPLIT_ALIASES = {"sft": "train", "rl": "train", "train": "train", "test": "test"}
DEFAULT_SIZES = {"train": 1000, "test": 200}
URI_PREFIX = "builtin://synthetic/"

# Fill colours: one of these hues (jittered per image) is used for every filled square.
PALETTE = (
    (200, 30, 30), (30, 140, 30), (30, 60, 200), (150, 40, 160),
    (210, 120, 0), (0, 130, 140), (90, 90, 90), (120, 70, 20),
)


def is_test_item(pattern: int, addend: int, colour: int) -> bool:
    """Whether a (fill pattern, addend, palette colour) triple belongs to the test split.

    A fixed quarter of the triples is test-only; every (count, addend) pair still occurs in both
    splits (with other colours or patterns), so the test is new items, not new arithmetic.

    >>> sum(is_test_item(p, a, c) for p in range(16) for a in ADDENDS for c in range(len(PALETTE)))
    192
    """
    return (pattern * 7 + addend * 3 + colour) % 4 == 0


_TRIPLES: dict[str, dict[int, list[tuple[int, int, int]]]] = {s: {c: [] for c in range(5)} for s in SPLITS}
for _p in range(16):
    for _a in ADDENDS:
        for _c in range(len(PALETTE)):
            _TRIPLES["test" if is_test_item(_p, _a, _c) else "train"][bin(_p).count("1")].append((_p, _a, _c))


def canonical_split(split: str) -> str:
    """'train' for train/sft/rl, 'test' for test.

    >>> canonical_split("rl"), canonical_split("test")
    ('train', 'test')
    """
    try:
        return SPLIT_ALIASES[split]
    except KeyError:
        raise ValueError(
            f"Synthetic split '{split}' is unknown, because only {sorted(SPLIT_ALIASES)} exist. "
            "Use builtin://synthetic/sft, builtin://synthetic/rl or builtin://synthetic/test."
        ) from None


def _rng(split: str, seed: int, index: int) -> random.Random:
    h = hashlib.sha256(f"synthetic:{split}:{seed}:{index}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


def filled_quadrants(pattern: int) -> list[str]:
    """Names of the filled quadrants of a 4-bit pattern (bit i = QUADRANTS[i]).

    >>> filled_quadrants(0b1001)
    ['top left', 'bottom right']
    """
    return [q for i, q in enumerate(QUADRANTS) if pattern >> i & 1]


def make_trace(pattern: int, addend: int) -> str:
    """The verified reasoning trace for a pattern and addend.

    Short on purpose (RL rollouts and evaluation generate it token by token on a CPU): the count
    read from the image, then the sum.

    >>> make_trace(0b1001, 5)
    '<think>2 filled. 2 + 5 = 7</think> \\\\boxed{7}'
    """
    count = bin(pattern).count("1")
    total = count + addend
    return f"<think>{count} filled. {count} + {addend} = {total}</think> \\boxed{{{total}}}"


def draw(pattern: int, colour: int, rng: random.Random) -> Image.Image:
    """A 64x64 RGB image of the 2x2 grid with the pattern's quadrants filled in a palette colour."""
    bg = tuple(rng.randint(215, 255) for _ in range(3))
    fill = tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in PALETTE[colour])
    ink = tuple(v // 3 for v in fill)
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), bg)
    d = ImageDraw.Draw(img)
    half = IMAGE_SIZE // 2
    for i in range(4):
        x0, y0 = (i % 2) * half, (i // 2) * half
        m = rng.randint(3, 6)
        box = (x0 + m, y0 + m, x0 + half - m, y0 + half - m)
        if pattern >> i & 1:
            d.rectangle(box, fill=fill, outline=ink, width=1)
        else:
            d.rectangle(box, outline=ink, width=1)
    return img


def generate(split: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """n rows of a split: {id, image (PIL), question, answer, trace, pattern, addend, colour}.

    Deterministic in (split, seed); row i does not depend on n (prefixes are nested).

    >>> rows = generate("test", 3, seed=0)
    >>> [r["id"] for r in rows]
    ['synthetic-test-0-0', 'synthetic-test-0-1', 'synthetic-test-0-2']
    >>> rows[0]["image"].size, rows[0]["question"].startswith("How many squares are filled?")
    ((64, 64), True)
    >>> verify_trace(rows[0]["trace"], rows[0]["answer"])
    True
    """
    split = canonical_split(split)
    if n < 0:
        raise ValueError(f"Synthetic n={n} is negative. Ask for 0 or more rows.")
    rows = []
    for i in range(n):
        rng = _rng(split, seed, i)
        count = rng.randrange(5)  # uniform count: the image cannot be guessed from priors
        pattern, addend, colour = rng.choice(_TRIPLES[split][count])
        rows.append(
            {
                "id": f"synthetic-{split}-{seed}-{i}",
                "image": draw(pattern, colour, rng),
                "question": QUESTION.format(a=addend),
                "answer": str(count + addend),
                "trace": make_trace(pattern, addend),
                "pattern": pattern,
                "addend": addend,
                "colour": colour,
            }
        )
    return rows


def verify_trace(trace: str, answer: str) -> bool:
    """Whether a trace has the study's format and boxes the given answer.

    >>> verify_trace(make_trace(3, 4), "6"), verify_trace(make_trace(3, 4), "7")
    (True, False)
    """
    import re

    m = re.fullmatch(r"<think>.*</think>\s*\\boxed\{([^{}]*)\}", trace, flags=re.DOTALL)
    return bool(m) and m.group(1).strip() == str(answer).strip()


# --- the task's solver: an offline teacher for distillation ---------------------------------------

SOLVER_URI = "builtin://synthetic-solver"
# Trace styles a sampling solver cycles through (sample j uses style j mod 4). Style 2 boxes the
# right answer without a <think> block, so it fails the study's format reward; sample order is not
# length order (style 1 is the longest), so "shortest first" is observable.
SOLVER_STYLES = (
    "<think>{c} filled. {c} + {a} = {t}</think> \\boxed{{{t}}}",
    "<think>The grid has {c} filled squares out of 4. Adding {a} gives {c} + {a} = {t}.</think> The answer is \\boxed{{{t}}}.",
    "{c} + {a} = {t}, so the answer is \\boxed{{{t}}}.",
    "<think>{c} filled, so {c} + {a} = {t}</think> \\boxed{{{t}}}",
)


def count_filled(image: Image.Image) -> int:
    """Filled squares of a task image, read from its pixels (each quadrant's centre against the corner).

    >>> rows = generate("test", 20)
    >>> all(count_filled(r["image"]) == bin(r["pattern"]).count("1") for r in rows)
    True
    """
    rgb = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE))
    bg = rgb.getpixel((1, 1))
    half = IMAGE_SIZE // 2
    filled = 0
    for i in range(4):
        px = rgb.getpixel(((i % 2) * half + half // 2, (i // 2) * half + half // 2))
        filled += max(abs(a - b) for a, b in zip(px, bg)) > 40
    return filled


def parse_solver_uri(uri: str) -> tuple[int, float]:
    """(skill, slip) of ``builtin://synthetic-solver[?skill=K&slip=P]``.

    ``skill``: the most filled squares it can count (default 4: all); above it, it answers K (wrong).
    ``slip``: the chance that a sampled response (temperature > 0) miscounts by one (default 0).

    >>> parse_solver_uri("builtin://synthetic-solver?skill=2&slip=0.25"), parse_solver_uri(SOLVER_URI)
    ((2, 0.25), (4, 0.0))
    """
    parsed = urlparse(uri)
    if f"{parsed.scheme}://{parsed.netloc}{parsed.path}".rstrip("/") != SOLVER_URI:
        raise ValueError(f"{uri} is not a solver URI. Use {SOLVER_URI}[?skill=K&slip=P].")
    query = parse_qs(parsed.query)
    unknown = sorted(set(query) - {"skill", "slip"})
    if unknown:
        raise ValueError(f"{uri} has unknown query keys {unknown}, because only skill and slip exist. Remove them.")
    try:
        skill = int(query["skill"][0]) if "skill" in query else 4
        slip = float(query["slip"][0]) if "slip" in query else 0.0
    except ValueError:
        raise ValueError(f"{uri}: skill must be an integer and slip a number. Fix the query string.") from None
    if not 0 <= skill <= 4 or not 0 <= slip <= 1:
        raise ValueError(f"{uri}: skill must be 0..4 and slip 0..1. Fix the query string.")
    return skill, slip


def solve(image: Image.Image, question: str, sample: int = 0, temperature: float = 0.0, skill: int = 4,
          slip: float = 0.0, seed: int = 0) -> str:
    """The solver's response to a task prompt: counts the image, reads the addend, writes a trace.

    Greedy (temperature 0): the canonical trace (`make_trace`). Sampling: sample j takes style
    j mod 4 of SOLVER_STYLES and miscounts by one with probability `slip` (a fixed function of
    seed, question, image and j). A count above `skill` is reported as `skill`.

    >>> r = generate("test", 1)[0]
    >>> solve(r["image"], r["question"]) == r["trace"]
    True
    >>> solve(r["image"], r["question"], sample=2, temperature=1.0).startswith("<think>")
    False
    """
    m = re.search(r"Add (\d+)", question)
    if m is None:
        return "I cannot read this question."
    addend, count = int(m.group(1)), min(count_filled(image), skill)
    if temperature <= 0:
        return make_trace_from_count(count, addend)
    key = hashlib.sha256(f"{seed}:{question}:{sample}".encode() + image.convert("RGB").tobytes()).digest()
    if int.from_bytes(key[:8], "big") / 2**64 < slip:
        count = count + 1 if count < 4 else count - 1
    return SOLVER_STYLES[sample % len(SOLVER_STYLES)].format(c=count, a=addend, t=count + addend)


def make_trace_from_count(count: int, addend: int) -> str:
    """`make_trace` from a count instead of a pattern.

    >>> make_trace_from_count(2, 5) == make_trace(0b1001, 5)
    True
    """
    return SOLVER_STYLES[0].format(c=count, a=addend, t=count + addend)


def parse_uri(uri: str) -> tuple[str, int, int]:
    """(canonical split, n, seed) of a builtin://synthetic/<split>[?n=..&seed=..] URI.

    >>> parse_uri("builtin://synthetic/rl?n=512")
    ('train', 512, 0)
    >>> parse_uri("builtin://synthetic/test")
    ('test', 200, 0)
    """
    if not uri.startswith(URI_PREFIX):
        raise ValueError(f"{uri} is not a synthetic dataset URI. Use {URI_PREFIX}<sft|rl|test>[?n=N&seed=S].")
    parsed = urlparse(uri)
    split = canonical_split(parsed.path.strip("/") or parsed.netloc)
    query = parse_qs(parsed.query)
    unknown = sorted(set(query) - {"n", "seed"})
    if unknown:
        raise ValueError(f"{uri} has unknown query keys {unknown}, because only n and seed exist. Remove them.")
    try:
        n = int(query["n"][0]) if "n" in query else DEFAULT_SIZES[split]
        seed = int(query["seed"][0]) if "seed" in query else 0
    except ValueError:
        raise ValueError(f"{uri}: n and seed must be integers. Fix the query string.") from None
    return split, n, seed


def load_uri(uri: str) -> list[dict[str, Any]]:
    """The rows a builtin://synthetic/... URI names."""
    split, n, seed = parse_uri(uri)
    return generate(split, n, seed)


def tokenizer_corpus() -> list[str]:
    """Texts covering the task's vocabulary (the tiny model's tokenizer is trained on them)."""
    texts = [QUESTION.format(a=a) for a in ADDENDS]
    texts += [make_trace(p, a) for p in range(16) for a in ADDENDS]
    return texts
