"""The offline tiny Qwen2-VL and Qwen2.5-VL: deterministic build, cache, processor, tokenizer, forward
and generate, head_dim 32 (vLLM's CPU attention), and the two families' different vision towers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from job_runtime.builtin import synthetic
from job_runtime.builtin.tiny_model import (
    FAMILIES,
    SPECIAL_TOKENS,
    TinyQwen2_5_VLProcessor,
    TinyQwen2VLProcessor,
    build_tiny_model,
    tiny_model_path,
)
from job_runtime.prompts import format_question


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny() -> Path:
    return tiny_model_path()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request) -> tuple[str, Path]:
    return request.param, tiny_model_path(request.param)


PROCESSORS = {"qwen2-vl": TinyQwen2VLProcessor, "qwen2.5-vl": TinyQwen2_5_VLProcessor}
MODEL_CLASSES = {"qwen2-vl": "Qwen2VLForConditionalGeneration", "qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration"}


def _messages(row: dict, with_answer: bool = True) -> list[dict]:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": format_question(row["question"])}]}]
    if with_answer:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": row["trace"]}]})
    return msgs


def test_build_is_deterministic(tmp_path):
    a, b = build_tiny_model(tmp_path / "a"), build_tiny_model(tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert _sha(a / name) == _sha(b / name), name


def test_cache_builds_once_under_sftrl_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTRL_CACHE", str(tmp_path))
    first = tiny_model_path()
    assert first.parent == tmp_path and (first / "config.json").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_path() == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp debris


def test_bad_mrope_section_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mrope_section"):
        build_tiny_model(tmp_path, {"mrope_section": [2, 3, 3]})


def test_auto_processor_and_chat_template(family):
    from transformers import AutoProcessor

    name, path = family
    proc = AutoProcessor.from_pretrained(path)
    assert type(proc) is PROCESSORS[name]
    tok = proc.tokenizer
    for t in SPECIAL_TOKENS:
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    row = synthetic.generate("train", 1)[0]
    text = proc.apply_chat_template(_messages(row, with_answer=False), tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>How many squares" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_tokenizer_is_compact_on_the_task_and_total_on_any_text(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    trace = synthetic.make_trace(0b0101, 3)
    assert len(tok.encode(trace)) <= 18  # task words are single tokens: short rollouts
    assert tok.tokenize(" 12") == ["Ġ", "1", "2"]  # one digit per token, as in Qwen2
    odd = "Ünïcødé π ≈ 3.14 — 日本 \\frac{1}{2}"
    assert tok.decode(tok.encode(odd)) == odd


def test_image_tokens_forward_and_generate(family):
    import transformers
    from transformers import AutoProcessor

    name, path = family
    torch.manual_seed(0)
    proc = AutoProcessor.from_pretrained(path)
    model = getattr(transformers, MODEL_CLASSES[name]).from_pretrained(path).eval()
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    rows = synthetic.generate("test", 2)
    texts = [proc.apply_chat_template(_messages(r), tokenize=False) for r in rows]
    enc = proc(text=texts, images=[[r["image"]] for r in rows], return_tensors="pt", padding=True)
    assert "mm_token_type_ids" in enc
    assert enc["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 4]]  # 64x64 -> 16 patches
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (enc["input_ids"] == image_id).sum(dim=1).tolist() == [4, 4]  # -> 4 image tokens
    out = model(**enc, labels=enc["input_ids"])
    assert torch.isfinite(out.loss) and out.loss.item() > 3.0  # random weights: near log(vocab)
    gen = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert gen.shape == (2, enc["input_ids"].shape[1] + 3)


def test_build_records_its_spec(family):
    name, path = family
    meta = json.loads((path / "sftrl_tiny.json").read_text())
    assert meta["spec"]["hidden_size"] == 64 and meta["build_version"] >= 3 and meta["family"] == name
    assert path.name.startswith(f"tiny-{name}-")


def test_head_dim_is_32_for_vllm_cpu_attention(family):
    """vLLM's CPU attention supports head sizes 32, 64, 80, ... (not 16): both tiny models have 32."""
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(family[1]).text_config
    assert text.hidden_size // text.num_attention_heads == 32
    assert sum(text.rope_parameters["mrope_section"]) * 2 == 32


def test_the_families_have_their_own_vision_towers():
    """Qwen2-VL: LayerNorm + GELU MLP + full attention; Qwen2.5-VL: RMSNorm + gated SiLU MLP, windowed
    attention with a full-attention block, a merger into the text width."""
    import transformers
    from transformers import AutoConfig

    c2 = AutoConfig.from_pretrained(tiny_model_path("qwen2-vl"))
    c25 = AutoConfig.from_pretrained(tiny_model_path("qwen2.5-vl"))
    assert (c2.model_type, c25.model_type) == ("qwen2_vl", "qwen2_5_vl")
    assert c25.vision_config.fullatt_block_indexes == [1] and c25.vision_config.window_size == 112
    assert c25.vision_config.out_hidden_size == c25.text_config.hidden_size == 64
    m2 = transformers.Qwen2VLForConditionalGeneration(c2)
    m25 = transformers.Qwen2_5_VLForConditionalGeneration(c25)
    block2, block25 = m2.model.visual.blocks[0], m25.model.visual.blocks[0]
    assert type(block2.norm1).__name__ == "LayerNorm" and "RMSNorm" in type(block25.norm1).__name__
    assert hasattr(block25.mlp, "gate_proj") and not hasattr(block2.mlp, "gate_proj")


def test_unknown_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match="only qwen2-vl, qwen2.5-vl exist"):
        build_tiny_model(tmp_path, family="llava")
