"""Generation backends with one interface: vLLM when importable (and a GPU is present), else HF
transformers. Both take `Request`s (a text prompt and its images) and return one response string
per request, in order, with the sampling parameters of the experiment's eval section (greedy when
temperature is 0).

- `HFBackend`: job_runtime.io.modeling's model and processor; the chat template with one image
  placeholder per image; batches of EvalParams.batch_size, left padding, sorted by prompt length
  (and grouped by image count) so padding stays small; responses are the decoded new tokens.
- `VLLMBackend`: ``vllm.LLM`` on the model folder (an s3:// model is downloaded first), the same
  chat template rendered by the HF processor, images through vLLM's multimodal input
  (``{"prompt": ..., "multi_modal_data": {"image": [...]}}``), ``SamplingParams`` from EvalParams.

`make_backend(model, params)` picks one; env SFTRL_EVAL_BACKEND=hf|vllm forces a choice.

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

from job_runtime.contract import EvalParams

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One prompt: the user turn's text and its images (PIL), placed before the text."""

    prompt: str
    images: list[Any] = field(default_factory=list)


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
        if sample:
            gen.update(temperature=p.temperature, top_p=p.top_p)
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


class VLLMBackend:
    """Batched generation with vLLM (GPU), images through its multimodal input."""

    name = "vllm"

    def __init__(self, model_uri: str, params: EvalParams, max_images: int = 4):
        from vllm import LLM, SamplingParams

        from job_runtime.io import modeling

        self.params = params
        path = resolve_model_path(model_uri)
        self.processor = modeling.load_processor(model_uri)
        self.llm = LLM(
            model=path,
            limit_mm_per_prompt={"image": max_images},
            trust_remote_code=True,
            seed=0,
            max_model_len=int(os.environ.get("SFTRL_VLLM_MAX_MODEL_LEN", "16384")),
            gpu_memory_utilization=float(os.environ.get("SFTRL_VLLM_GPU_MEMORY", "0.85")),
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
        outs = self.llm.generate(inputs, self.sampling)
        return [o.outputs[0].text.strip() for o in outs]


def resolve_model_path(model_uri: str) -> str:
    """A path or hub id vLLM can open (job_runtime.io.modeling downloads s3:// and builds builtin://)."""
    from job_runtime.io import modeling

    return str(modeling.resolve(model_uri))


def vllm_usable() -> bool:
    """vLLM is importable and a CUDA device is present."""
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def make_backend(model_uri: str, params: EvalParams, backend: str | None = None) -> Backend:
    """The generation backend: `backend`, else env SFTRL_EVAL_BACKEND, else vLLM when usable, else HF."""
    choice = (backend or os.environ.get("SFTRL_EVAL_BACKEND") or "").lower() or (
        "vllm" if vllm_usable() and not model_uri.startswith("builtin://") else "hf"
    )
    if choice not in ("hf", "vllm"):
        raise GenerationError(f"Generation backend '{choice}' is unknown, because only hf and vllm exist. Set SFTRL_EVAL_BACKEND to one.")
    from job_runtime.io.modeling import ModelLoadError

    try:
        return VLLMBackend(model_uri, params) if choice == "vllm" else HFBackend(model_uri, params)
    except ModelLoadError as e:
        raise GenerationError(str(e)) from None
    except ImportError as e:
        raise GenerationError(
            f"The {choice} generation backend cannot start, because {e}. Install it (pip install 'sftrl[gpu]' for vLLM) "
            "or set SFTRL_EVAL_BACKEND=hf."
        ) from None
