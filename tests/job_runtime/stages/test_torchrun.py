"""SFT and RL under ``torchrun --nproc_per_node 2`` on CPU (gloo), against the same stage in one process.

What the cluster runs, here: the real entrypoint (``torchrun -m job_runtime <kind> --config``), two
ranks, a file:// store. Each 2-process run has the global batch of a 1-process run, so the stage
derives half the gradient accumulation; then

- one optimiser step sees the same prompts and the same completions (GRPO) or the same examples
  (SFT) as the 1-process run, and the logged loss and gradient norm agree within float tolerance
  (this fails when the accumulation arithmetic ignores the world size: twice the prompts per step);
- rank 0 alone publishes (``publish_stage`` is called once, by rank 0) and the metrics hold one row
  per step, with held-out accuracy summed over both ranks' shares of the held-out set;
- DAPO's dynamic sampling judges each rank's groups by that rank's own rewards (every group a rank
  trains on has reward variance; this fails when a rank reads another rank's slice);
- a run killed after its first checkpoint resumes from it and finishes with the same steps.

Test-only shims (tests/shims/sitecustomize.py, in every rank through PYTHONPATH):
``SFTRL_SHIM_SEEDED_ROLLOUTS`` samples each HF rollout with a seed of (prompt, rollout index, step),
so rollouts do not depend on how the batch is split across processes; ``SFTRL_SHIM_RECORD`` writes
what each rank trained on and who called ``publish_stage``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from job_runtime.contract import Labels, RLParams, SFTParams, StageConfig
from job_runtime.io import storage
from tests.conftest import ROOT
from tests.job_runtime.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.torchrun]

SHIMS = ROOT / "tests" / "shims"
REWARD = "tests.job_runtime.stages.test_torchrun.even_answer_vowel_reward"
TIMEOUT = 900


def even_answer_vowel_reward(completions, answer, **_):
    """Vowel share of the completion for prompts with an even answer, 0 for odd ones: about half the
    groups have reward variance and half are flat, on every rank (dynamic sampling has work to do)."""
    out = []
    for c, a in zip(completions, answer):
        text = c[-1]["content"] if isinstance(c, list) else str(c)
        out.append(sum(ch in "aeiou" for ch in text) / max(len(text), 1) if int(a) % 2 == 0 else 0.0)
    return out


def rl_stage(output: str, algorithm: str, **overrides) -> StageConfig:
    params = {
        # one update per rollout batch (mini_batch_size = global_batch_size), so an optimiser step is a rollout batch
        "epochs": 1, "learning_rate": 1e-3, "global_batch_size": 4, "mini_batch_size": 4, "per_device_batch_size": 8,
        "num_generations": 4, "max_prompt_length": 256, "max_completion_length": 8, "min_pixels": 16384,
        "heldout_every_steps": 1, "heldout_size": 6, "save_steps": 1, "generation": {"backend": "hf"},
        "reward": {"accuracy": 0.9, "format": 0.1, "custom": {REWARD: 1.0}},
        **overrides,
    }
    return StageConfig(
        kind="rl", id=f"rl-{algorithm}", output=output, model="builtin://tiny-qwen2-vl",
        data={"train": "builtin://synthetic/rl", "heldout": "builtin://synthetic/test?n=6"}, scale=8, seed=0,
        algorithm=algorithm, params=RLParams.model_validate(params).model_dump(mode="json"),
        labels=Labels(experiment="t", run="r", stage=f"rl-{algorithm}", model="tiny", method=algorithm),
    )


def sft_stage(output: str) -> StageConfig:
    params = {"epochs": 1, "learning_rate": 3e-3, "global_batch_size": 8, "per_device_batch_size": 4,
              "max_length": 256, "gradient_checkpointing": False, "save_steps": 2}
    return StageConfig(
        kind="sft", id="sft-torchrun", output=output, model="builtin://tiny-qwen2-vl",
        data={"train": "builtin://synthetic/sft"}, scale=24, seed=0,
        params=SFTParams.model_validate(params).model_dump(mode="json"),
        labels=Labels(experiment="t", run="r", stage="sft-torchrun", model="tiny", method="sft"),
    )


class Run:
    """One `torchrun -m job_runtime` launch: its config, store, records and log."""

    def __init__(self, tmp: Path, name: str, cfg_factory, nproc: int):
        self.dir = tmp / name
        self.records = self.dir / "records"
        self.records.mkdir(parents=True)
        self.output = storage.normalize(self.dir / "stage")
        self.cfg = cfg_factory(self.output)
        self.config = self.dir / "stage.json"
        self.config.write_text(self.cfg.model_dump_json())
        self.nproc = nproc
        self.log = self.dir / "log.txt"

    def start(self) -> subprocess.Popen:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(SHIMS), str(ROOT)]),
            "SFTRL_SHIM_SEEDED_ROLLOUTS": "1",
            "SFTRL_SHIM_RECORD": str(self.records),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(self.nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "job_runtime", self.cfg.kind, "--config", str(self.config)]
        f = open(self.log, "a")
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

    def run(self) -> None:
        proc = self.start()
        try:
            rc = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            raise
        assert rc == 0, self.log.read_text()[-5000:]

    def rows(self, rank: int | None = None) -> list[dict]:
        out = []
        for path in sorted(self.records.glob("rank*.jsonl")):
            out += [json.loads(line) for line in path.read_text().splitlines()]
        return [r for r in out if rank is None or r["rank"] == rank]

    def metrics(self) -> list[dict]:
        return list(storage.read_jsonl(storage.join(self.output, "metrics.jsonl")))


def descendants(pid: int) -> list[int]:
    """pid and every process below it (torchrun starts its ranks in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its ranks at once: a node lost mid-step, nobody cleans up."""
    for pid in descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def step_samples(run: Run, step: int) -> Counter:
    """(prompt, completion) pairs one optimiser step trained on, over all ranks and micro-batches."""
    pairs: Counter = Counter()
    for r in run.rows():
        if r["event"] == "micro_batch" and r["step"] == step:
            pairs.update((tuple(p), tuple(c)) for p, c in zip(r["prompts"], r["completions"]))
    return pairs


def by_step(rows: list[dict], key: str) -> dict[int, float]:
    out: dict[int, float] = {}
    for r in rows:
        if key in r:
            assert r["step"] not in out, f"two rows of {key} for step {r['step']}: {rows}"
            out[r["step"]] = r[key]
    return out


def assert_rank0_published_once(run: Run) -> None:
    publishes = [r for r in run.rows() if r["event"] == "publish"]
    assert [(r["rank"], r["output"]) for r in publishes] == [(0, run.output)], publishes
    assert storage.read_manifest(run.output) is not None


@pytest.fixture(scope="module")
def grpo_runs(tmp_path_factory) -> tuple[Run, Run]:
    """GRPO, 4 prompts x 4 rollouts per step, 2 steps: one process (accumulation 2) and two (accumulation 1).
    The 2-process run is killed once its first checkpoint is complete, then started again."""
    tmp = tmp_path_factory.mktemp("grpo")
    one = Run(tmp, "one", lambda out: rl_stage(out, "grpo"), nproc=1)
    one.run()
    two = Run(tmp, "two", lambda out: rl_stage(out, "grpo"), nproc=2)
    proc = two.start()
    first = storage.join(two.output, "checkpoints", "checkpoint-1", "_SUCCESS")
    deadline = time.time() + TIMEOUT
    while not storage.exists(first):
        assert proc.poll() is None, f"the run ended before its first checkpoint:\n{two.log.read_text()[-5000:]}"
        assert time.time() < deadline, two.log.read_text()[-5000:]
        time.sleep(0.2)
    kill_tree(proc)  # every rank, mid-run, without a chance to clean up
    time.sleep(1)
    assert storage.read_manifest(two.output) is None, "the run finished before it was killed"
    (two.dir / "killed").write_text("")
    os.rename(two.records, two.dir / "records-killed")
    two.records.mkdir()
    two.run()
    return one, two


def test_grpo_two_processes_see_the_one_process_batch(grpo_runs):
    one, two = grpo_runs
    # Step 1 (index 0), from the killed launch: identical prompts and completions.
    killed = _killed(two)
    first_one, first_two = step_samples(one, 0), step_samples(killed, 0)
    assert sum(first_one.values()) == 16 and first_one == first_two
    # Step 2, after the resume: the same prompts (the sampler resumed where it stopped).
    prompts = lambda run: Counter(p for (p, _), n in step_samples(run, 1).items() for _ in range(n))  # noqa: E731
    assert sum(prompts(one).values()) == 16 and prompts(one) == prompts(two)
    # Each rank trained on half of every step: 8 completions, in one micro-batch (accumulation 1).
    for rank in (0, 1):
        sizes = [len(r["prompts"]) for r in killed.rows(rank) if r["event"] == "micro_batch" and r["step"] == 0]
        assert sizes == [8], sizes


def test_grpo_losses_match_and_rank0_alone_publishes_and_logs(grpo_runs):
    one, two = grpo_runs
    m1, m2 = one.metrics(), two.metrics()
    for key in ("loss", "reward", "grad_norm"):
        a, b = by_step(m1, key), by_step(m2, key)
        assert sorted(a) == sorted(b) == [1, 2], (key, a, b)
        assert b[1] == pytest.approx(a[1], rel=1e-4, abs=1e-6), (key, a, b)
    assert by_step(m2, "reward")[2] == pytest.approx(by_step(m1, "reward")[2], rel=1e-3, abs=1e-5)
    # held-out accuracy: one row per evaluation (start, every step), over the whole held-out set
    assert sorted(by_step(m2, "heldout_accuracy")) == [0, 1, 2]
    assert by_step(m2, "heldout_accuracy")[0] == by_step(m1, "heldout_accuracy")[0]
    assert "(6 items)" in two.log.read_text()
    assert_rank0_published_once(one)
    assert_rank0_published_once(two)
    assert [r for r in Run.rows(_killed(two)) if r["event"] == "publish"] == []


def test_killed_run_resumed_from_its_checkpoint(grpo_runs):
    _, two = grpo_runs
    log = two.log.read_text()
    assert "resuming from" in log and "checkpoint-1" in log
    results = storage.read_json(storage.join(two.output, "results.json"))
    assert results["global_step"] == 2
    resumed_steps = sorted({r["step"] for r in two.rows() if r["event"] == "micro_batch"})
    assert resumed_steps == [1]  # the resumed launch trained only the step the checkpoint lacked


def _killed(two: Run) -> Run:
    killed = Run.__new__(Run)
    killed.records = two.dir / "records-killed"
    return killed


def test_dapo_dynamic_sampling_judges_each_rank_by_its_own_rewards(tmp_path):
    run = Run(tmp_path, "dapo", lambda out: rl_stage(out, "dapo", overlong_buffer=0), nproc=2)
    run.run()
    metrics = run.metrics()
    dropped = by_step(metrics, "dynamic_sampling/dropped_groups")
    assert sum(dropped.values()) > 0, "no group was flat: the reward gives dynamic sampling nothing to do"
    filled = by_step(metrics, "dynamic_sampling/filled_groups")
    for rank in (0, 1):
        micro = [r for r in run.rows(rank) if r["event"] == "micro_batch"]
        assert micro, rank
        for r in micro:
            if filled.get(r["step"] + 1, 0):
                continue  # a batch topped up with flat groups after max_rounds: allowed, and counted
            groups: dict[str, list[float]] = {}
            for key, adv in zip(r["groups"], r["advantages"]):
                groups.setdefault(key, []).append(adv)
            # 2 whole groups per rank (a refill may draw a prompt already in the batch: one key, 8 rows)
            assert sum(map(len, groups.values())) == 8 and all(len(g) % 4 == 0 for g in groups.values()), groups
            flat = [g for g in groups.values() if not any(abs(a) > 0 for a in g)]
            assert not flat, f"rank {rank} trained on a group without reward variance at step {r['step'] + 1}: {groups}"
    assert_rank0_published_once(run)


def test_sft_two_processes_match_one(tmp_path):
    one = Run(tmp_path, "one", sft_stage, nproc=1)
    two = Run(tmp_path, "two", sft_stage, nproc=2)
    one.run()
    two.run()
    m1, m2 = one.metrics(), two.metrics()
    for key in ("loss", "grad_norm"):
        a, b = by_step(m1, key), by_step(m2, key)
        assert sorted(a) == sorted(b) == [1, 2, 3], (key, a, b)
        for step in a:
            assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-6), (key, step, a, b)
    r1 = storage.read_json(storage.join(one.output, "results.json"))
    r2 = storage.read_json(storage.join(two.output, "results.json"))
    assert r1["samples_seen"] == r2["samples_seen"] == 24 and r1["global_step"] == r2["global_step"] == 3
    assert_rank0_published_once(one)
    assert_rank0_published_once(two)
