"""Generation backends with one interface: vLLM or HF transformers, chosen by
``generation.backend`` (`contract.GenerationParams`: ``vllm``, ``hf`` or ``auto``). Both take `Request`s (a text prompt and its images) and return one response string
per request, in order, with the sampling parameters of the experiment's eval section (greedy when
temperature is 0).

- `HFBackend`: job_runtime.io.modeling's model and processor; the chat template with one image
  placeholder per image; batches of EvalParams.batch_size, left padding, sorted by prompt length
  (and grouped by image count) so padding stays small; responses are the decoded new tokens.
- `VLLMBackend`: ``vllm.LLM`` on the model folder (an s3:// model is downloaded first), the same
  chat template rendered by the HF processor, images through vLLM's multimodal input
  (``{"prompt": ..., "multi_modal_data": {"image": [...]}}``), ``SamplingParams`` from EvalParams.
  On a CPU build of vLLM the KV cache is ``generation.cpu_kv_cache_gib`` (VLLM_CPU_KVCACHE_SPACE).

`choose_backend` decides by capability, not by CUDA: ``auto`` is vLLM when it is installed and its
platform found a device it runs on (`vllm_usable`: a GPU for the CUDA build, the CPU for the CPU
build), else HF; ``vllm`` demands it (an error says why it cannot run); ``hf`` never uses it. The
RL stage uses the same choice for its rollouts (vLLM colocate). `make_backend(model, params)`
builds the eval backend.

>>> Request("What is 2+3?").images
[]
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from job_runtime.contract import EvalParams, GenerationParams

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One prompt: the user turn's text and its images (PIL), placed before the text.

    ``independent``: vLLM draws this request's sample from the engine's generator (seeded once,
    when the engine starts) instead of the per-request seed it gives every request, so that k
    copies of a prompt are k samples rather than one sample k times. (A seed per copy would do too,
    but the CPU build of vLLM 0.31 cannot rewind a seeded CPU generator when it chunks a prefill.)
    HF needs nothing: a batch draws every row from torch's generator, seeded by the caller.
    """

    prompt: str
    images: list[Any] = field(default_factory=list)
    independent: bool = False


class GenerationError(RuntimeError):
    """The backend could not be built or run; the message says what to do."""


class Backend(Protocol):
    name: str

    def generate(self, requests: Sequence[Request]) -> list[str]: ...


def messages(req: Request) -> list[dict[str, Any]]:
    """The chat messages of a request (images first, then the text).

    >>> messages(Request("Q?"))
    [{'role': 'user', 'content': [{'type': 'text', 'text': 'Q?'}]}]
    """
    content: list[dict[str, Any]] = [{"type": "image"} for _ in req.images]
    content.append({"type": "text", "text": req.prompt})
    return [{"role": "user", "content": content}]


def chat_text(processor: Any, req: Request) -> str:
    return processor.apply_chat_template(messages(req), add_generation_prompt=True, tokenize=False)


class HFBackend:
    """Batched generation with transformers (CPU or GPU)."""

    name = "hf"

    def __init__(self, model_uri: str, params: EvalParams):
        import torch

        from job_runtime.io import modeling

        self.params = params
        cuda = torch.cuda.is_available()
        self.processor = modeling.load_processor(model_uri)
        self.model = modeling.load_model(model_uri, for_training=False)  # bf16 on a GPU, fp32 on CPU
        if cuda:
            self.model.to("cuda")
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)

    def _batch(self, reqs: Sequence[Request]) -> list[str]:
        import torch

        texts = [chat_text(self.processor, r) for r in reqs]
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
            if any(r.images for r in reqs):
                kwargs["images"] = [img for r in reqs for img in r.images]
            inputs = self.processor(**kwargs)
        finally:
            self.tokenizer.padding_side = side
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        p = self.params
        sample = p.temperature > 0
        gen: dict[str, Any] = {"max_new_tokens": p.max_new_tokens, "do_sample": sample}
        if sample:  # top_k=0: no top-k cut, as vLLM's and TRL's GRPO sampling (transformers' default is 50)
            gen.update(temperature=p.temperature, top_p=p.top_p, top_k=0)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(**inputs, pad_token_id=pad, **gen)
        new = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def generate(self, requests: Sequence[Request]) -> list[str]:
        # group by image count (a processor batch needs one layout), then by length to cut padding
        order = sorted(range(len(requests)), key=lambda i: (len(requests[i].images), len(requests[i].prompt)))
        out: list[str] = [""] * len(requests)
        bs = self.params.batch_size
        i = 0
        t0 = time.time()
        while i < len(order):
            n_img = len(requests[order[i]].images)
            j = i
            while j < len(order) and j - i < bs and len(requests[order[j]].images) == n_img:
                j += 1
            idx = order[i:j]
            for k, text in zip(idx, self._batch([requests[k] for k in idx])):
                out[k] = text
            i = j
        log.info("hf: %d responses in %.1f s", len(requests), time.time() - t0)
        return out


EVAL_GPU_MEMORY = 0.85  # vLLM's share of GPU memory when eval has the GPU to itself
MAX_MODEL_LEN = 16384  # vLLM's longest sequence unless generation.max_model_len says otherwise


class VLLMBackend:
    """Batched generation with vLLM (GPU, or the CPU build), images through its multimodal input."""

    name = "vllm"

    def __init__(self, model_uri: str, params: EvalParams, max_images: int = 4):
        from vllm import LLM, SamplingParams

        from job_runtime.io import modeling

        self.params = params
        gen = params.generation
        path = resolve_model_path(model_uri)
        self.processor = modeling.load_processor(model_uri)
        prepare_vllm_env(gen)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.llm = LLM(
            model=str(path),
            limit_mm_per_prompt={"image": max_images, "video": 0},  # no benchmark has video
            trust_remote_code=True,
            seed=0,
            # the HF backend's precision: float32 on a CPU, the checkpoint's (bf16) on a GPU
            dtype="float32" if vllm_platform() == "cpu" else "auto",
            max_model_len=max_model_len(model_uri, gen),
            gpu_memory_utilization=gen.gpu_memory_utilization or EVAL_GPU_MEMORY,
        )
        self.sampling = SamplingParams(
            temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            max_tokens=params.max_new_tokens,
            seed=0,
        )

    def generate(self, requests: Sequence[Request]) -> list[str]:
        inputs = []
        for r in requests:
            item: dict[str, Any] = {"prompt": chat_text(self.processor, r)}
            if r.images:
                item["multi_modal_data"] = {"image": r.images if len(r.images) > 1 else r.images[0]}
            inputs.append(item)
        sampling: Any = self.sampling
        if any(r.independent for r in requests):  # copies of a prompt: independent samples
            unseeded = _seeded(self.sampling, None)
            sampling = [unseeded if r.independent else self.sampling for r in requests]
        outs = self.llm.generate(inputs, sampling, use_tqdm=False)
        # Decoded like HFBackend (same tokenizer call), so equal tokens give equal text: vLLM's own
        # incremental detokenizer holds back a trailing partial UTF-8 character that HF decodes as U+FFFD.
        return [self.tokenizer.decode(list(o.outputs[0].token_ids), skip_special_tokens=True).strip() for o in outs]


def _seeded(sampling: Any, seed: int | None) -> Any:
    out = sampling.clone()
    out.seed = seed
    return out


def resolve_model_path(model_uri: str) -> str:
    """A path or hub id vLLM can open (job_runtime.io.modeling downloads s3:// and builds builtin://)."""
    from job_runtime.io import modeling

    return str(modeling.resolve(model_uri))


def max_model_len(model_uri: str, gen: GenerationParams) -> int:
    """generation.max_model_len, else the model's own limit capped at MAX_MODEL_LEN."""
    if gen.max_model_len:
        return gen.max_model_len
    from job_runtime.io import modeling

    config = modeling.load_config(model_uri)
    text = getattr(config, "text_config", None) or config
    return min(MAX_MODEL_LEN, int(getattr(text, "max_position_embeddings", MAX_MODEL_LEN) or MAX_MODEL_LEN))


def prepare_vllm_env(gen: GenerationParams) -> None:
    """Environment a vLLM engine reads when it starts: the CPU build's KV cache size (GiB), unless set."""
    if vllm_platform() == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(gen.cpu_kv_cache_gib))


def vllm_platform() -> str | None:
    """The device vLLM's platform detection found ('cuda', 'cpu', 'rocm', ...), or None when vLLM is
    not installed, does not import, or found no device it runs on (the CUDA build without a GPU)."""
    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        from vllm.platforms import current_platform
    except Exception as e:  # noqa: BLE001 - a broken install is "not usable", with the reason logged
        log.warning("vLLM is installed but does not import (%s: %s)", type(e).__name__, e)
        return None
    device = getattr(current_platform, "device_type", "") or ""
    return device or None


def vllm_usable() -> bool:
    """vLLM is installed and its platform found a device it can run on (capability, not CUDA)."""
    return vllm_platform() is not None


def choose_backend(gen: GenerationParams, section: str) -> str:
    """'vllm' or 'hf' for generation.backend; `section` ('eval' or 'rl') names the setting in errors.

    >>> choose_backend(GenerationParams(backend="hf"), "eval")
    'hf'
    """
    if gen.backend == "hf":
        return "hf"
    if gen.backend == "auto":
        return "vllm" if vllm_usable() else "hf"
    if importlib.util.find_spec("vllm") is None:
        raise GenerationError(
            f"{section}.generation.backend is vllm, but vLLM is not installed here, because this environment was "
            "built without it. Use the runtime image (CUDA vLLM), `make venv-vllm` (the CPU build), or set "
            f"{section}.generation.backend: hf."
        )
    if not vllm_usable():
        raise GenerationError(
            f"{section}.generation.backend is vllm, but vLLM found no device it runs on, because this vLLM build "
            f"does not support this machine (the CUDA build needs a GPU). Install the build for this machine, or set "
            f"{section}.generation.backend: hf."
        )
    return "vllm"


def make_backend(model_uri: str, params: EvalParams) -> Backend:
    """The eval generation backend that eval.generation.backend chooses (see `choose_backend`)."""
    from job_runtime.io.modeling import ModelLoadError

    choice = choose_backend(params.generation, "eval")
    try:
        return VLLMBackend(model_uri, params) if choice == "vllm" else HFBackend(model_uri, params)
    except ModelLoadError as e:
        raise GenerationError(str(e)) from None
    except ImportError as e:
        raise GenerationError(
            f"The {choice} generation backend cannot start, because {e}. Install what is missing, "
            "or set eval.generation.backend: hf."
        ) from None
