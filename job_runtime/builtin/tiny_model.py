"""Offline tiny Qwen2-VL and Qwen2.5-VL: random seeded weights, a locally trained tokenizer, real processors.

``builtin://tiny-qwen2-vl`` and ``builtin://tiny-qwen2.5-vl`` name them. Each is a genuine
``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration`` (vision tower,
merger, M-RoPE text decoder) shrunk to ~0.5M parameters, so every code path of the study -- the
processor, TRL's SFT and GRPO trainers, generation with transformers and with vLLM, evaluation --
runs on a laptop CPU in seconds, and the model can learn the synthetic task
(job_runtime.builtin.synthetic). The two families differ where the real ones do: Qwen2-VL's
vision tower uses LayerNorm, a GELU MLP and full attention; Qwen2.5-VL's uses RMSNorm, a gated
SiLU MLP, windowed attention with full-attention blocks (``fullatt_block_indexes``) and a merger
into ``out_hidden_size``.

The text decoder has 2 attention heads of 32 dimensions (one key/value head): vLLM's CPU
attention supports head sizes 32, 64, 80, ... and not smaller ones, so the tiny models run on the
CPU build of vLLM too. ``mrope_section`` [4, 6, 6] sums to head_dim / 2.

The tokenizer is a byte-level BPE with Qwen2's pre-tokenizer (one digit per token), trained on
the synthetic task's texts and the EasyR1 format prompt; any text still encodes (byte fallback
through the byte alphabet). It keeps the Qwen special tokens the chat template needs and uses
Qwen2-VL's chat template (Qwen2.5-VL's is the same), so images render as
``<|vision_start|><|image_pad|><|vision_end|>``. A 64x64 image is resized to 56x56: 16 patches
of 14x14, merged 2x2 into 4 image tokens.

Processor. transformers' Qwen2VLProcessor / Qwen2_5_VLProcessor want a video processor, which
needs torchvision (unusable with the CPU torch here). `TinyQwen2VLProcessor` and
`TinyQwen2_5_VLProcessor` pass ``video_processor=None`` and are registered with AutoProcessor, so
``AutoProcessor.from_pretrained(dir)`` works once this module is imported (job_runtime.io.modeling
imports it).

>>> sorted(FAMILIES)
['qwen2-vl', 'qwen2.5-vl']
>>> family_of("builtin://tiny-qwen2.5-vl")
'qwen2.5-vl'
>>> path = tiny_model_path("qwen2-vl")   # doctest: +SKIP
>>> # (builds once, ~2 s, then cached)
>>> path.name.startswith("tiny-qwen2-vl-")  # doctest: +SKIP
True
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from transformers import AutoProcessor, PretrainedConfig
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

URI = "builtin://tiny-qwen2-vl"
URI_QWEN2_5 = "builtin://tiny-qwen2.5-vl"
FAMILIES: dict[str, str] = {"qwen2-vl": URI, "qwen2.5-vl": URI_QWEN2_5}  # family -> builtin:// URI
BUILD_VERSION = 3  # bump when the recipe below changes: the cache key includes it
SEED = 0

# The EasyR1 format prompt (a fixed fact of the study; job_runtime.prompts holds the live copy).
_FORMAT_PROMPT = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final "
    "answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST "
    "BE put in \\boxed{}."
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
EXTRA_TOKENS = ["<think>", "</think>"]

# Qwen2-VL-Instruct's chat template (images and videos as vision placeholders).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The model's shape. head_dim = hidden / heads = 32 (vLLM's CPU attention needs 32, 64, 80, ...), so
# mrope_section sums to 16. The vision keys are read by both families (vision_embed_dim is the tower's
# width; Qwen2.5-VL's MLP is vision_embed_dim x 2 wide, its windows vision_window pixels).
DEFAULT_SPEC: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "mrope_section": [4, 6, 6],
    "vision_embed_dim": 32,
    "vision_depth": 2,
    "vision_heads": 2,
    "vision_window": 112,
    "tokenizer_vocab": 768,
}


class TinyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without a video processor (which would need torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)


class TinyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2_5_VLProcessor without a video processor (which would need torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)


class _TinyProcessorKey(PretrainedConfig):
    """Registration key only: lets AutoProcessor find TinyQwen2VLProcessor by its class name."""

    model_type = "sftrl_tiny_qwen2_vl_processor"


class _TinyProcessorKey25(PretrainedConfig):
    """Registration key only: lets AutoProcessor find TinyQwen2_5_VLProcessor by its class name."""

    model_type = "sftrl_tiny_qwen2_5_vl_processor"


AutoProcessor.register(_TinyProcessorKey, TinyQwen2VLProcessor, exist_ok=True)
AutoProcessor.register(_TinyProcessorKey25, TinyQwen2_5_VLProcessor, exist_ok=True)


def family_of(uri: str) -> str:
    """The family of a builtin:// tiny-model URI; KeyError for any other."""
    for family, u in FAMILIES.items():
        if uri.rstrip("/") == u:
            return family
    raise KeyError(uri)


def _corpus() -> list[str]:
    from job_runtime.builtin import synthetic

    texts = synthetic.tokenizer_corpus()
    texts += [f"{q} {_FORMAT_PROMPT}" for q in texts[:10]]
    texts += ["<|im_start|>system\nYou are a helpful assistant.", "<|im_start|>user\n", "<|im_start|>assistant\n"] * 4
    texts += [" ".join(str(i) for i in range(100)), "\\boxed{} \\frac{1}{2} A B C D E ( ) . , : ; ? ! = + - * /"]
    return texts


def build_tokenizer(vocab_size: int = 768):
    """A Qwen2Tokenizer whose BPE is trained on the synthetic task's texts (deterministic)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    vocab = tok.get_vocab()
    merges = [tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    out = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=4096,
        errors="replace",
    )
    out.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    out.add_tokens([AddedToken(t, special=False, normalized=False) for t in EXTRA_TOKENS])
    out.chat_template = CHAT_TEMPLATE
    return out


def _text_config(s: dict[str, Any], vocab: int, ids: dict[str, int]) -> dict[str, Any]:
    return {
        "vocab_size": vocab,
        "hidden_size": s["hidden_size"],
        "intermediate_size": s["intermediate_size"],
        "num_hidden_layers": s["num_hidden_layers"],
        "num_attention_heads": s["num_attention_heads"],
        "num_key_value_heads": s["num_key_value_heads"],
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": s["mrope_section"]},
        "bos_token_id": None,
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }


def _vision_config(family: str, s: dict[str, Any]) -> dict[str, Any]:
    common = {"depth": s["vision_depth"], "num_heads": s["vision_heads"], "patch_size": 14, "spatial_merge_size": 2,
              "temporal_patch_size": 2}
    if family == "qwen2-vl":  # LayerNorm, GELU MLP of mlp_ratio x embed_dim, full attention
        return {**common, "embed_dim": s["vision_embed_dim"], "hidden_size": s["hidden_size"], "mlp_ratio": 2}
    # Qwen2.5-VL: RMSNorm, gated SiLU MLP, windowed attention except in the last block
    return {**common, "hidden_size": s["vision_embed_dim"], "intermediate_size": 2 * s["vision_embed_dim"],
            "out_hidden_size": s["hidden_size"], "window_size": s["vision_window"],
            "fullatt_block_indexes": [s["vision_depth"] - 1], "hidden_act": "silu"}


def build_tiny_model(out_dir: str | os.PathLike[str], spec: dict[str, Any] | None = None, family: str = "qwen2-vl") -> Path:
    """Build a tiny model of `family` + its processor into out_dir (seeded, offline); returns out_dir.

    >>> import tempfile; d = build_tiny_model(tempfile.mkdtemp())   # doctest: +SKIP
    >>> sorted(p.name for p in d.iterdir())[:3]                     # doctest: +SKIP
    ['chat_template.jinja', 'config.json', 'generation_config.json']
    """
    import torch
    import transformers
    from transformers import GenerationConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if family not in FAMILIES:
        raise ValueError(f"Tiny model family '{family}' is unknown, because only {', '.join(FAMILIES)} exist. Use one.")
    s = {**DEFAULT_SPEC, **(spec or {})}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(s["tokenizer_vocab"])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = (len(tokenizer) + 63) // 64 * 64
    head_dim = s["hidden_size"] // s["num_attention_heads"]
    if sum(s["mrope_section"]) * 2 != head_dim:
        raise ValueError(f"mrope_section {s['mrope_section']} must sum to head_dim/2 = {head_dim // 2}.")
    qwen25 = family == "qwen2.5-vl"
    config_cls = transformers.Qwen2_5_VLConfig if qwen25 else transformers.Qwen2VLConfig
    model_cls = transformers.Qwen2_5_VLForConditionalGeneration if qwen25 else transformers.Qwen2VLForConditionalGeneration
    config = config_cls(
        text_config=_text_config(s, vocab, ids),
        vision_config=_vision_config(family, s),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = model_cls(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    processor_cls = TinyQwen2_5_VLProcessor if qwen25 else TinyQwen2VLProcessor
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    meta = {"build_version": BUILD_VERSION, "family": family, "spec": s}
    (out / "sftrl_tiny.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def cache_root() -> Path:
    """$SFTRL_CACHE, else ~/.cache/sftrl."""
    return Path(os.environ.get("SFTRL_CACHE") or Path.home() / ".cache" / "sftrl").expanduser()


def tiny_model_path(family: str = "qwen2-vl", spec: dict[str, Any] | None = None) -> Path:
    """The cached build directory of a tiny model (builtin://tiny-<family>), built once (atomically) on first use."""
    if family not in FAMILIES:
        raise ValueError(f"Tiny model family '{family}' is unknown, because only {', '.join(FAMILIES)} exist. Use one.")
    s = {**DEFAULT_SPEC, **(spec or {})}
    key = hashlib.sha256(json.dumps({"v": BUILD_VERSION, "family": family, "spec": s}, sort_keys=True).encode()).hexdigest()[:12]
    final = cache_root() / f"tiny-{family}-{key}"
    if (final / "sftrl_tiny.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tiny-{family}-", dir=final.parent))
    try:
        build_tiny_model(tmp, s, family)
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race: its build is identical
            if not (final / "sftrl_tiny.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
