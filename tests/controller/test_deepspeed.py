"""Every DeepSpeed config the controller can render is accepted by DeepSpeed itself (on CPU).

``deepspeed.runtime.config.DeepSpeedConfig`` asks ``deepspeed.comm`` for the data-parallel world
size; without a process group it assumes 1 and rejects any config rendered for more GPUs. The
``ds_validate`` fixture therefore starts a real one-process gloo group on 127.0.0.1 and passes an
``mpu`` reporting the world size the config was rendered for, so DeepSpeed checks
train_batch_size == micro x accumulation x world itself. (DeepSpeed's CPU backend would JIT-compile
its shared-memory all-reduce kernel when the group starts; config validation never uses it, so the
fixture turns that build off.)
"""

from __future__ import annotations

import importlib
import itertools
import json
import socket
import subprocess
import sys
from datetime import timedelta
from typing import Any, Callable, Iterator

import pytest
from pydantic import ValidationError

from controller.deepspeed import (
    Resources,
    accumulation_steps,
    choose_zero_stage,
    estimate_params_billion,
    render_deepspeed,
)
from tests.conftest import missing

CHOICES = ("auto", "zero2", "zero3")
OFFLOAD = (False, True)
LAYOUTS = [  # (gpus_per_node, nodes, per_device_batch, grad_accum)
    (1, 1, 1, 1),
    (8, 1, 4, 4),
    (8, 2, 2, 16),
    (8, 8, 8, 5),
]
SIZES = (0.5, 3.0, 7.0, 72.0, None)
KINDS = ("sft", "rl")


def _cases() -> list[tuple[str, bool, tuple[int, int, int, int], float | None, str, bool]]:
    grid = list(itertools.product(CHOICES, OFFLOAD, LAYOUTS, SIZES, KINDS, (True,)))
    grid += [("zero3", True, (8, 2, 2, 16), 7.0, "sft", False), ("zero2", False, (8, 1, 4, 4), 3.0, "rl", False)]
    return grid


def _render(case) -> tuple[dict[str, Any], int]:
    choice, offload, (gpus, nodes, micro, accum), size, kind, bf16 = case
    res = Resources(gpus_per_node=gpus, nodes=nodes, deepspeed=choice, offload=offload)
    cfg = render_deepspeed(res, size, kind, micro, accum, res.world_size, bf16=bf16)
    assert cfg is not None, f"{case} rendered no config"
    return cfg, res.world_size


def _id(case) -> str:
    choice, offload, (g, n, m, a), size, kind, bf16 = case
    return f"{choice}-{'off' if offload else 'gpu'}-{g}x{n}-m{m}a{a}-{size}B-{kind}{'' if bf16 else '-fp32'}"


class _DataParallel:
    """The one method DeepSpeedConfig asks of a model-parallel unit: the data-parallel world size."""

    def __init__(self, world: int) -> None:
        self.world = world

    def get_data_parallel_world_size(self) -> int:
        return self.world


@pytest.fixture(scope="module")
def ds_validate() -> Iterator[Callable[[dict[str, Any], int], Any]]:
    try:
        import deepspeed
        import deepspeed.comm as dist
        from deepspeed.runtime.config import DeepSpeedConfig
    except ImportError as exc:
        missing(f"deepspeed is not importable ({exc}); DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import torch.distributed

    with pytest.MonkeyPatch.context() as mp:
        # by name: the attribute deepspeed.comm.torch is the torch package itself
        mp.setattr(importlib.import_module("deepspeed.comm.torch"), "build_shm_op", lambda: None)
        mp.setattr(importlib.import_module("deepspeed.comm.comm"), "cdb", None)  # restored on exit
        deepspeed.init_distributed(
            dist_backend="gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
            auto_mpi_discovery=False, verbose=False, timeout=timedelta(seconds=60),
        )
        try:
            yield lambda cfg, world: DeepSpeedConfig(json.loads(json.dumps(cfg)), mpu=_DataParallel(world))
        finally:
            dist.destroy_process_group()
    assert not torch.distributed.is_initialized()  # later tests see no process group


@pytest.mark.parametrize("case", _cases(), ids=_id)
def test_deepspeed_accepts_every_rendered_config(case, ds_validate) -> None:
    cfg, world = _render(case)
    choice, offload, (gpus, nodes, micro, accum), size, kind, bf16 = case
    ds = ds_validate(cfg, world)
    assert ds.world_size == world
    assert (ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps) == (micro, accum)
    assert ds.train_batch_size == micro * accum * world
    assert ds.zero_enabled and ds.zero_optimization_stage == cfg["zero_optimization"]["stage"]
    assert ds.bfloat16_config.enabled is bf16 and not ds.float16_config.enabled
    assert ds.gradient_clipping == 1.0
    zc = ds.zero_config
    assert (zc.offload_optimizer is not None and zc.offload_optimizer.device == "cpu") is offload
    assert (zc.offload_param is not None) is (offload and ds.zero_optimization_stage == 3)
    if ds.zero_optimization_stage == 3:
        assert zc.gather_16bit_weights_on_model_save  # model/ holds loadable 16-bit weights


def test_deepspeed_rejects_what_it_should(ds_validate) -> None:
    """The validator is not a rubber stamp: inconsistent batches and unknown ZeRO keys fail."""
    cfg, world = _render(("zero2", False, (8, 1, 4, 4), 3.0, "sft", True))
    with pytest.raises(AssertionError, match="train_batch_size is not equal"):
        ds_validate(dict(cfg, train_batch_size=cfg["train_batch_size"] + 8), world)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ds_validate(dict(cfg, zero_optimization={**cfg["zero_optimization"], "stage3_typo": 1}), world)


def _walk(obj: Any) -> Iterator[Any]:
    yield obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


@pytest.mark.parametrize("case", _cases(), ids=_id)
def test_no_auto_and_batch_arithmetic(case) -> None:
    cfg, world = _render(case)
    assert not [v for v in _walk(cfg) if isinstance(v, str) and v.lower() == "auto"]
    assert "auto" not in json.dumps(cfg).lower()
    _, _, (gpus, nodes, micro, accum), _, _, _ = case
    assert world == gpus * nodes
    assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * world
    assert all(isinstance(cfg[k], int) for k in ("train_batch_size", "train_micro_batch_size_per_gpu",
                                                  "gradient_accumulation_steps"))
    zero = cfg["zero_optimization"]
    assert all(isinstance(v, int) and v > 0 for k, v in zero.items() if k.endswith(("_size", "_threshold")))


@pytest.mark.parametrize(
    "choice, size, expected",
    [("auto", 0.5, 2), ("auto", 3.0, 2), ("auto", 6.9, 2), ("auto", 7.0, 3), ("auto", 72.0, 3), ("auto", None, 3),
     ("zero2", 72.0, 2), ("zero3", 0.5, 3), ("none", 72.0, None)],
)
def test_zero_stage_choice(choice: str, size: float | None, expected: int | None) -> None:
    res = Resources(gpus_per_node=8, deepspeed=choice)
    assert choose_zero_stage(res, size, "sft") == expected
    cfg = render_deepspeed(res, size, "rl", 2, 2, 8)
    assert (cfg and cfg["zero_optimization"]["stage"]) == expected or (cfg is None and expected is None)


def test_no_deepspeed_for_eval_or_cpu() -> None:
    assert render_deepspeed(Resources(gpus_per_node=8, deepspeed="zero3"), 7.0, "eval", 8, 1, 8) is None
    assert render_deepspeed(Resources(gpus_per_node=0), 7.0, "sft", 2, 1, 1) is None  # auto on CPU
    assert render_deepspeed(Resources(gpus_per_node=8, deepspeed="none"), 72.0, "sft", 2, 1, 8) is None


def test_offload_only_when_asked() -> None:
    for size in SIZES:
        cfg = render_deepspeed(Resources(gpus_per_node=8), size, "sft", 2, 2, 8)
        assert "offload_optimizer" not in cfg["zero_optimization"] and "offload_param" not in cfg["zero_optimization"]
    z2 = render_deepspeed(Resources(gpus_per_node=8, deepspeed="zero2", offload=True), 3.0, "sft", 2, 2, 8)
    assert z2["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert "offload_param" not in z2["zero_optimization"]  # ZeRO-2 cannot offload parameters


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gpus_per_node": -1}, "greater than or equal to 0"),
        ({"nodes": 0}, "greater than or equal to 1"),
        ({"deepspeed": "zero1"}, "'auto', 'none', 'zero2' or 'zero3'"),
        ({"gpus_per_node": 0, "deepspeed": "zero3"}, "deepspeed is zero3, but gpus_per_node is 0, because"),
        ({"gpus_per_node": 8, "deepspeed": "none", "offload": True}, "offload is true, but deepspeed is none"),
        ({"memory": "lots"}, "'lots' is not a Kubernetes quantity"),
        ({"tolerations": [{"key": "gpu", "operater": "Exists"}]}, "toleration 0 has unknown keys \\['operater'\\]"),
        ({"tolerations": [{"key": "gpu", "operator": "Maybe"}]}, "toleration 0 has operator 'Maybe'"),
        ({"gpu": 8}, "Extra inputs are not permitted"),
    ],
)
def test_resources_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Resources(**kwargs)


def test_resources_fields() -> None:
    r = Resources(gpus_per_node=8, nodes=2, cpu=32, memory="256Gi", shm_size="64Gi", node_selector={"gpu": "h100"},
                  tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    assert (r.world_size, r.cpu, r.memory, r.deepspeed, r.offload) == (16, "32", "256Gi", "auto", False)
    assert Resources().world_size == 1 and Resources().gpus_per_node == 0
    assert all(f.description for f in Resources.model_fields.values())


@pytest.mark.parametrize("bad", [{"per_device_batch": 0}, {"grad_accum": -1}, {"world_size": 1.5},
                                 {"model_params_billion": 0.0}, {"model_params_billion": float("nan")}])
def test_render_rejects_bad_arguments(bad: dict[str, Any]) -> None:
    args = {"resources": Resources(gpus_per_node=8), "model_params_billion": 3.0, "kind": "sft",
            "per_device_batch": 2, "grad_accum": 2, "world_size": 8} | bad
    with pytest.raises(ValueError, match=f"{next(iter(bad))} is .*, because"):
        render_deepspeed(**args)


def test_accumulation_steps() -> None:
    assert accumulation_steps(128, 4, 8) == 4
    assert accumulation_steps(5120, 8, 16) == 40  # paper RL: 512 prompts x 10 rollouts on 16 GPUs
    with pytest.raises(ValueError, match="not a multiple of per-device batch 4 x world size 8 = 32.*Use 96 or 128"):
        accumulation_steps(100, 4, 8)
    with pytest.raises(ValueError, match="Use 32\\."):
        accumulation_steps(8, 4, 8)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("qwen2.5-vl-3b", 3.0),
        ("qwen2-vl-2b", 2.0),
        ("Qwen/Qwen2-VL-7B-Instruct", 7.0),
        ("Qwen/Qwen2.5-VL-72B-Instruct", 72.0),
        ("Qwen/Qwen2.5-VL-3B-Instruct", 3.0),
        ("meta-llama/Llama-3.2-11B-Vision", 11.0),
        ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", 1.1),
        ("HuggingFaceTB/SmolVLM-256M-Instruct", 0.256),
        ("mistralai/Mixtral-8x7B-v0.1", 56.0),
        ("Qwen/Qwen3-VL-30B-A3B-Instruct", 30.0),
        ("/models/qwen-7b/checkpoint-500", 7.0),
        ("s3://bucket/sftrl/stages/3f2a9c/model", None),
        ("builtin://tiny-qwen2-vl", None),
        ("gpt2", None),
        ("llava-hf/llava-1.5-7b-hf", 7.0),
        ("some-model-4bit", None),
        ("", None),
    ],
)
def test_estimate_params_billion(name: str, expected: float | None) -> None:
    assert estimate_params_billion(name) == expected


def test_module_imports_no_training_stack() -> None:
    code = "import sys, controller.deepspeed; print(sorted({'torch', 'deepspeed', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
