"""Sampling and scoring rollouts, shared by the distill and probe stages (not a stage itself).

Both stages do the same three things on RL-style rows (image, question, answer):

1. `load_prompts`: the first N usable rows of a source in the fixed subset order
   (job_runtime.io.data.select with rl_row), decontaminated like the RL stage's own prompts;
2. `sample`: k responses per prompt from a generation backend -- the eval stage's backends
   (job_runtime.eval.generation.make_backend: vLLM on GPUs, HF otherwise), or the synthetic task's
   offline solver for ``builtin://synthetic-solver`` (`SolverBackend`);
3. `score`: every response scored by the study's rewards through job_runtime.train.rewards'
   public `weighted` (accuracy first, format second, then custom rewards), called as TRL's
   GRPOTrainer calls them: conversational completions plus the dataset's columns. The total is
   the weighted sum TRL forms (``(rewards_per_func * reward_weights).nansum(dim=1)``), so a
   group's reward spread here is the spread GRPO would see.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from job_runtime.contract import EvalParams, RewardWeights
from job_runtime.errors import StageError
from job_runtime.io import storage

log = logging.getLogger(__name__)

CHUNK_PROMPTS = 256  # prompts per generation call: bounds the images held in memory at once


def rank_zero() -> bool:
    """Whether this process does the work: distill and probe run whole on rank 0 (other ranks, when a
    launcher starts several, have nothing to do; give these stages one GPU, vLLM uses it all)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def workdir(output: str, kind: str) -> Iterator[Path]:
    """Where a stage writes its files: the output folder itself for file://, else a temp folder."""
    if storage.is_local(output):
        path = storage.local_path(output)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix=f"sftrl-{kind}-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Prompt:
    """One RL-style row: id, the user text (study format prompt included), image bytes, gold answer."""

    id: str
    text: str
    image: bytes
    answer: str
    choices: list[str] | None = None


@dataclass
class Scored:
    """k responses of one prompt with their reward components (in `names` order) and weighted totals."""

    prompt: Prompt
    responses: list[str]
    parts: list[list[float]]  # parts[f][j]: reward function f on response j
    totals: list[float]
    names: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> list[float]:
        return self.parts[0]

    @property
    def format(self) -> list[float]:
        return self.parts[1]


def load_prompts(uri: str, n: int | None, exclude=None, cap: bool = False) -> tuple[list[Prompt], Any]:
    """(prompts, DataReport): the first `n` usable rows of `uri` (all when n is None).

    With ``cap`` a source shorter than n is fine (all its rows); otherwise it is an error, as for a
    training scale.
    """
    from job_runtime.io import data

    try:
        rows, report = data.select(uri, data.rl_row, n, "prompts", exclude)
    except data.DataError as e:
        if not cap or "exceeds" not in str(e):
            raise
        rows, report = data.select(uri, data.rl_row, None, "prompts", exclude)
    out = [Prompt(str(r.get("id") or i), r["prompt"][0]["content"], r["image"], r["answer"], r.get("choices"))
           for i, r in enumerate(rows)]
    return out, report


# --- backends -------------------------------------------------------------------------------------


class SolverBackend:
    """builtin://synthetic-solver as a generation backend (job_runtime.builtin.synthetic.solve).

    The i-th request with the same prompt and image is sample i of that prompt, so k copies of a
    prompt give k samples, as k sampled responses of a model would.
    """

    name = "synthetic-solver"

    def __init__(self, uri: str, params: EvalParams, seed: int = 0):
        from job_runtime.builtin import synthetic

        self.skill, self.slip = synthetic.parse_solver_uri(uri)
        self.params, self.seed = params, seed
        self.seen: dict[bytes, int] = {}

    def generate(self, requests: Sequence[Any]) -> list[str]:
        from job_runtime.builtin import synthetic

        out = []
        for r in requests:
            image = r.images[0] if r.images else None
            if image is None:
                out.append("I cannot see an image.")
                continue
            key = hashlib.sha256(r.prompt.encode() + image.tobytes()).digest()
            j = self.seen.get(key, 0)
            self.seen[key] = j + 1
            out.append(synthetic.solve(image, r.prompt, j, self.params.temperature, self.skill, self.slip, self.seed))
        return out


def make_backend(model: str, params: EvalParams, seed: int = 0, section: str = "generation"):
    """The backend for a model URI: the solver for builtin://synthetic-solver, else the eval stage's
    (params.generation.backend: vllm, hf or auto). ``section`` names the setting in errors, which are
    StageErrors (a config error of the stage: exit 1, not retried)."""
    from job_runtime.builtin.synthetic import SOLVER_URI
    from job_runtime.eval import generation

    try:
        if model.split("?")[0].rstrip("/") == SOLVER_URI:
            return SolverBackend(model, params, seed)
        import torch

        torch.manual_seed(seed)  # HF sampling draws from torch's generator
        return generation.make_backend(model, params)
    except (generation.GenerationError, ValueError) as e:  # name the setting of this stage, not eval's
        raise StageError(str(e).replace("eval.generation", section)) from None


# --- sampling and scoring -------------------------------------------------------------------------


def sample(backend: Any, prompts: Sequence[Prompt], k: int, min_pixels: int | None = None,
           max_pixels: int | None = None) -> list[list[str]]:
    """k responses per prompt: responses[i][j] is sample j of prompt i. Images are resized into the
    pixel bounds first (job_runtime.io.images.fit: the RL stage's rule), when bounds are given. The
    copies of a prompt are independent samples: vLLM draws them from its engine's generator (its
    per-request seed would repeat one sample k times), HF from torch's (`make_backend` seeds it)."""
    from PIL import Image

    from job_runtime.eval.generation import Request
    from job_runtime.io.images import fit

    out: list[list[str]] = []
    t0 = time.time()
    for start in range(0, len(prompts), CHUNK_PROMPTS):
        chunk = prompts[start : start + CHUNK_PROMPTS]
        images = [fit(Image.open(io.BytesIO(p.image)), min_pixels, max_pixels) for p in chunk]
        reqs = [Request(p.text, [im], independent=True) for p, im in zip(chunk, images) for _ in range(k)]
        flat = backend.generate(reqs)
        out += [flat[i * k : (i + 1) * k] for i in range(len(chunk))]
    log.info("%s: %d prompts x %d samples in %.1f s", getattr(backend, "name", "backend"), len(prompts), k,
             time.time() - t0)
    return out


def score(prompts: Sequence[Prompt], responses: Sequence[Sequence[str]], weights: RewardWeights) -> list[Scored]:
    """Every response scored by the study's reward functions, as GRPOTrainer calls them (a reward
    that cannot be loaded is a StageError)."""
    from job_runtime.train import rewards

    try:
        funcs, ws = rewards.weighted(weights, weights.accuracy_rule or "mathruler")
    except rewards.RewardConfigError as e:
        raise StageError(str(e)) from None
    names = [getattr(f, "__name__", f"reward_{i}") for i, f in enumerate(funcs)]
    out = []
    for p, resps in zip(prompts, responses):
        n = len(resps)
        completions = [[{"role": "assistant", "content": r}] for r in resps]
        columns = {
            "prompts": [[{"role": "user", "content": p.text}]] * n,
            "answer": [p.answer] * n,
            "choices": [p.choices] * n,
            "id": [p.id] * n,
        }
        parts = [[float(v) for v in f(completions, **columns)] for f in funcs]
        totals = [sum(w * part[j] for w, part in zip(ws, parts)) for j in range(n)]
        out.append(Scored(p, list(resps), parts, totals, names))
    return out


def group_std(values: Sequence[float]) -> float:
    """The unbiased standard deviation TRL's nanstd takes of a group (0 for one value).

    >>> group_std([1.0, 1.0, 1.0]), round(group_std([0.0, 1.0]), 4)
    (0.0, 0.7071)
    """
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5


def has_signal(values: Sequence[float]) -> bool:
    """Whether a GRPO group gets a learning signal: TRL's ``not torch.isclose(std, 0)`` (atol 1e-8).

    >>> has_signal([0.1, 0.1, 0.1, 0.1]), has_signal([0.0, 1.0, 1.0, 1.0])
    (False, True)
    """
    return group_std(values) > 1e-8
