"""Loading a vision-language model and its processor from any place the study names one.

A model reference is one of:

- ``builtin://tiny-qwen2-vl``, ``builtin://tiny-qwen2.5-vl`` -- the offline tiny models (built once
  into the cache; job_runtime.builtin.tiny_model);
- a local directory or ``file://`` URI holding ``from_pretrained`` files (e.g. a parent stage's
  ``model/``);
- an ``s3://`` URI of such a directory (downloaded once into the cache, keyed by URI: stage
  outputs are content-addressed, so a URI never changes content);
- a Hugging Face hub id such as ``Qwen/Qwen2.5-VL-3B-Instruct`` (the hub cache or a download).

The model class follows the config: Qwen2-VL and Qwen2.5-VL use their own classes, anything else
``AutoModelForImageTextToText``. Without torchvision (CPU torch here), a Qwen processor is built
without its video processor (images only), which is all the study needs.

>>> resolve("builtin://tiny-qwen2-vl").name.startswith("tiny-qwen2-vl-")   # doctest: +SKIP
True
>>> resolve("Qwen/Qwen2-VL-2B-Instruct")
'Qwen/Qwen2-VL-2B-Instruct'
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from job_runtime.io import storage

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin://"
TINY_URI = "builtin://tiny-qwen2-vl"
TINY_URIS = ("builtin://tiny-qwen2-vl", "builtin://tiny-qwen2.5-vl")  # job_runtime.builtin.tiny_model.FAMILIES


class ModelLoadError(RuntimeError):
    """A model or processor could not be loaded; the message says why and what to do."""


def resolve(uri: str) -> Path | str:
    """A local directory for builtin/file/s3 references; a hub id is returned unchanged.

    >>> resolve("/tmp")
    PosixPath('/tmp')
    """
    uri = str(uri)
    if uri.startswith(BUILTIN_PREFIX):
        if uri.rstrip("/") in TINY_URIS:
            from job_runtime.builtin.tiny_model import family_of, tiny_model_path

            return tiny_model_path(family_of(uri))
        raise ModelLoadError(
            f"Model {uri} is not a built-in model, because only {' and '.join(TINY_URIS)} exist. "
            f"Use one of them, a local path, an s3:// URI or a Hugging Face id."
        )
    if uri.startswith("s3://"):
        return _download(uri)
    if uri.startswith("file://") or uri.startswith(("/", "./", "../", "~")) or Path(uri).expanduser().exists():
        path = storage.local_path(storage.normalize(uri))
        if not path.is_dir():
            raise ModelLoadError(
                f"Model path {path} does not exist or is not a directory, because nothing was saved there. "
                "Point model at a folder holding config.json (e.g. a finished stage's model/)."
            )
        return path
    return uri


def _download(uri: str) -> Path:
    from job_runtime.builtin.tiny_model import cache_root

    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    final = cache_root() / "models" / key
    if (final / ".sftrl_complete").exists():
        return final
    if not storage.list_prefix(uri):
        raise ModelLoadError(f"Model {uri} holds no files, because the stage that writes it has not finished. "
                             "Run the parent stage first or fix the URI.")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        storage.download_dir(uri, tmp)
        (tmp / ".sftrl_complete").write_text(uri)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same download first
            if not (final / ".sftrl_complete").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _hub_error(uri: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"Model '{uri}' could not be loaded, because it is not a local folder and there is no hub access here "
        f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). Download it where the hub is reachable "
        "(huggingface-cli download) and point model at the folder or an s3:// copy, or use builtin://tiny-qwen2-vl."
    )


def _is_local(ref: Path | str) -> bool:
    return isinstance(ref, Path)


def _model_class(model_type: str):
    import transformers

    if model_type == "qwen2_vl":
        return transformers.Qwen2VLForConditionalGeneration
    if model_type == "qwen2_5_vl":
        return transformers.Qwen2_5_VLForConditionalGeneration
    return transformers.AutoModelForImageTextToText


def load_config(uri: str):
    """The model's transformers config."""
    from transformers import AutoConfig

    ref = resolve(uri)
    try:
        return AutoConfig.from_pretrained(str(ref))
    except OSError as e:
        if _is_local(ref):
            raise ModelLoadError(f"Model folder {ref} has no readable config.json ({e}). "
                                 "Point model at a folder saved by save_pretrained.") from None
        raise _hub_error(uri, e) from None


def load_model(uri: str, for_training: bool = True, dtype: Any = None, attn_implementation: str | None = "sdpa"):
    """The model, in train mode (use_cache off) or eval mode.

    dtype: a torch dtype; default float32 on CPU and bfloat16 on a GPU that supports it.

    >>> m = load_model("builtin://tiny-qwen2-vl", for_training=False)   # doctest: +SKIP
    >>> type(m).__name__                                                # doctest: +SKIP
    'Qwen2VLForConditionalGeneration'
    """
    import torch

    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    ref = resolve(uri)
    config = load_config(uri)
    cls = _model_class(getattr(config, "model_type", ""))
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = cls.from_pretrained(str(ref), **kwargs)
    except OSError as e:
        if _is_local(ref):
            raise ModelLoadError(f"Model folder {ref} could not be loaded ({e}). "
                                 "Check that it holds the weights saved by save_pretrained.") from None
        raise _hub_error(uri, e) from None
    except ValueError as e:
        if attn_implementation and "attn" in str(e).lower():
            return load_model(uri, for_training, dtype, attn_implementation=None)
        raise
    if for_training:
        model.config.use_cache = False
        model.train()
    else:
        model.eval()
    return model


def load_checkpoint_weights(model, checkpoint_dir: str | os.PathLike[str]) -> None:
    """Load a Trainer checkpoint's weights into `model` through ``from_pretrained``.

    transformers 5 saves Qwen2-VL weights under their published (legacy) key names and converts
    them back only in ``from_pretrained``; ``Trainer._load_from_checkpoint`` uses a plain
    ``load_state_dict(strict=False)``, so a resumed run silently keeps its initial weights (every
    key "missing"). Loading through ``from_pretrained`` applies the conversion; strict loading
    makes any remaining mismatch an error instead of a warning.
    """
    fresh = type(model).from_pretrained(str(checkpoint_dir), dtype=next(model.parameters()).dtype)
    model.load_state_dict(fresh.state_dict(), strict=True)
    del fresh


class CheckpointWeightsMixin:
    """Mixin for a transformers Trainer subclass: resume loads weights with `load_checkpoint_weights`,
    and optimizer state also in a multi-process CPU run.

    DeepSpeed and FSDP checkpoints keep the Trainer's own loading (they store engine state).
    Several processes on CPU (torchrun, gloo): the Trainer loads the optimizer state with
    ``map_location=args.device``, which is ``cpu:0`` there, a location ``torch.load`` cannot restore
    to ("don't know how to restore data location ... cpu:0"), so such a run could not resume; it
    is loaded to ``cpu`` instead.

    >>> from transformers import Trainer
    >>> class MyTrainer(CheckpointWeightsMixin, Trainer): pass
    """

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        ckpt = Path(resume_from_checkpoint)
        # single-file or sharded (model.safetensors.index.json, as 7B models save): from_pretrained reads both
        has_weights = (ckpt / "model.safetensors").is_file() or (ckpt / "model.safetensors.index.json").is_file()
        if getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False) or not has_weights:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)  # type: ignore[misc]
        log.info("loading checkpoint weights from %s through from_pretrained", resume_from_checkpoint)
        load_checkpoint_weights(model if model is not None else self.model, resume_from_checkpoint)  # type: ignore[attr-defined]

    def _load_optimizer_and_scheduler(self, checkpoint):
        import torch

        device = getattr(getattr(self, "args", None), "device", None)
        if checkpoint is None or not isinstance(device, torch.device) or device.type != "cpu" or device.index is None:
            return super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]
        original = torch.load

        def load(*args, map_location=None, **kwargs):
            if isinstance(map_location, torch.device) and map_location.type == "cpu":
                map_location = "cpu"
            return original(*args, map_location=map_location, **kwargs)

        torch.load = load
        try:
            return super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]
        finally:
            torch.load = original


def load_processor(uri: str):
    """The processor (tokenizer + image processor), loadable without torchvision.

    >>> p = load_processor("builtin://tiny-qwen2-vl")                   # doctest: +SKIP
    >>> p.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)[:22]  # doctest: +SKIP
    '<|im_start|>system\\nYou '
    """
    from transformers import AutoProcessor

    import job_runtime.builtin.tiny_model  # noqa: F401  registers TinyQwen2VLProcessor with AutoProcessor

    ref = resolve(uri)
    try:
        processor = AutoProcessor.from_pretrained(str(ref))
    except (ImportError, ModuleNotFoundError) as e:  # torchvision missing: build the images-only processor
        processor = _videoless_processor(str(ref), e)
    except OSError as e:
        if _is_local(ref):
            raise ModelLoadError(f"Model folder {ref} has no processor files ({e}). "
                                 "Save the processor next to the model (processor.save_pretrained).") from None
        raise _hub_error(uri, e) from None
    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def _videoless_processor(ref: str, err: Exception):
    from transformers import AutoTokenizer

    from job_runtime.builtin.tiny_model import TinyQwen2_5_VLProcessor, TinyQwen2VLProcessor

    config = load_config(ref)
    model_type = getattr(config, "model_type", "")
    if model_type not in ("qwen2_vl", "qwen2_5_vl"):
        raise ModelLoadError(
            f"The processor of {ref} could not be loaded, because a package is missing ({err}). "
            "Install torchvision matching your torch, or use a Qwen2-VL / Qwen2.5-VL model."
        ) from None
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil.from_pretrained(ref)
    tokenizer = AutoTokenizer.from_pretrained(ref)
    log.info("loaded %s's processor without its video processor (%s)", ref, err)
    cls = TinyQwen2_5_VLProcessor if model_type == "qwen2_5_vl" else TinyQwen2VLProcessor
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=getattr(tokenizer, "chat_template", None))
