"""The sft stage: batch arithmetic, pass-through, real seeded TRL training on the tiny model (file://
and s3:// outputs), resume from a checkpoint, pinned metrics, and learning the synthetic task."""

from __future__ import annotations

import doctest
import shutil

import pytest

from job_runtime.io import modeling, storage
from job_runtime.errors import StageError
from job_runtime.contract import Labels, SFTParams, StageConfig
from job_runtime.stages import sft

# A short seeded run: 32 synthetic examples, batch 8 -> 4 optimiser steps, a checkpoint every 2.
SHORT = {"epochs": 1, "learning_rate": 3e-3, "global_batch_size": 8, "per_device_batch_size": 4,
         "max_length": 256, "gradient_checkpointing": False, "save_steps": 2}
# Pinned from a reference run (torch 2.13 CPU, transformers 5.17, trl 1.16; head_dim 32): an unintended change
# to the model build, the task, the prompt or the loss masking moves these.
FIRST_LOSS = 6.1043  # step 1 runs at lr 0 (warmup): the loss of the built model on the traces
LAST_LOSS = 5.4279  # step 4: after three updates (LLaMA-Factory recipe: vision tower and projector frozen)
FIRST_TOKENS = 768.0  # tokens in the first step (prompt + completion, 8 sequences)


def stage(output: str, params: dict | None = None, scale: int = 32, seed: int = 0,
          model: str = "builtin://tiny-qwen2-vl", **kw) -> StageConfig:
    return StageConfig(
        kind="sft", id="sft-test", output=output, model=model,
        data={"train": "builtin://synthetic/sft"}, scale=scale, seed=seed, params=params or SHORT,
        labels=Labels(experiment="e", run="r", stage="sft-test", model="tiny", method="sft"), **kw,
    )


def rows(uri: str) -> list[dict]:
    return [r for r in storage.read_jsonl(storage.join(uri, "metrics.jsonl")) if "loss" in r]


def test_doctests():
    result = doctest.testmod(sft)
    assert result.attempted >= 4 and result.failed == 0


def test_config_kwargs_pass_through_and_deepspeed():
    ds = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 4}
    kw = sft.sft_config_kwargs(stage("file:///x", deepspeed=ds), SFTParams(trl={"max_grad_norm": 0.5}), "/o", 1, False)
    assert kw["deepspeed"] == ds and kw["max_grad_norm"] == 0.5
    assert kw["gradient_accumulation_steps"] == 32 and kw["completion_only_loss"] is True
    assert kw["lr_scheduler_type"] == "cosine" and kw["warmup_steps"] == 0.1 and kw["use_cpu"] is True
    assert kw["max_length"] == 2048  # LLaMA-Factory's cutoff_len
    trl = sft.sft_config_kwargs(stage("file:///x"), SFTParams(recipe="trl"), "/o", 1, False)
    assert (trl["lr_scheduler_type"], trl["warmup_steps"], trl["max_length"]) == ("linear", 0, 1024)


@pytest.mark.parametrize(
    "params,match",
    [
        ({**SHORT, "trl": {"packingg": True}}, r"sft.trl.packingg is not a trl.SFTConfig field.*did you mean packing"),
        ({**SHORT, "global_batch_size": 10}, r"global_batch_size 10 does not divide into .* 4 x 1 = 4.*e.g. 8 or 12"),
        ({**SHORT, "trl": {"lr_scheduler_type": "nonsense"}}, r"rejected by trl.SFTConfig"),
        ({**SHORT, "epochs": -1}, r"sft parameters of stage sft-test are invalid"),
    ],
)
def test_bad_settings_are_stage_errors(tmp_path, params, match):
    with pytest.raises(StageError, match=match):
        sft.run(stage(f"file://{tmp_path}/out", params))
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_too_few_rows_is_a_stage_error(tmp_path):
    cfg = stage(f"file://{tmp_path}/out", scale=64).model_copy(update={"data": {"train": "builtin://synthetic/sft?n=10"}})
    with pytest.raises(StageError, match="Data scale 64 exceeds the 10 usable rows"):
        sft.run(cfg)


def test_loss_is_on_the_completion_only(tmp_path):
    from trl import SFTConfig

    from job_runtime.io import data

    params = SFTParams.model_validate(SHORT)
    args = SFTConfig(**sft.sft_config_kwargs(stage("file:///x"), params, str(tmp_path), 1, False))
    train, _ = data.load_sft("builtin://synthetic/sft", scale=2)
    processor = modeling.load_processor("builtin://tiny-qwen2-vl")
    trainer_cls, _ = sft._trainer_class()
    trainer = trainer_cls(model=modeling.load_model("builtin://tiny-qwen2-vl"), args=args, train_dataset=train,
                          processing_class=processor)
    batch = trainer.data_collator([train[0]])
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    trained = ids[labels != -100]
    text = processor.tokenizer.decode(trained)
    assert text.startswith("<think>") and text.endswith("<|im_end|>\n")
    assert text.removesuffix("<|im_end|>\n") == train[0]["completion"][0]["content"]
    assert (labels[: int((labels == -100).sum())] == -100).all()  # the whole prompt is masked, image included
    assert "pixel_values" in batch and "mm_token_type_ids" in batch


@pytest.mark.slow
def test_short_run_file_output_pinned_metrics_and_resume(tmp_path):
    out = f"file://{tmp_path}/stage"
    sft.run(stage(out))
    manifest = storage.read_manifest(out)
    assert manifest is not None and manifest["kind"] == "sft"
    assert manifest["samples_seen"] == 32 and manifest["global_step"] == 4
    assert manifest["data"] == {"source": "builtin://synthetic/sft", "total": 32, "used": 32, "skipped": {}}
    assert {"model/model.safetensors", "model/tokenizer.json", "metrics.jsonl", "results.json"} <= set(manifest["files"])
    logged = rows(out)
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert logged[0]["loss"] == pytest.approx(FIRST_LOSS, abs=2e-3)
    assert logged[0]["num_tokens"] == FIRST_TOKENS
    assert logged[-1]["loss"] == pytest.approx(LAST_LOSS, abs=2e-3)
    assert logged[1]["learning_rate"] > logged[-1]["learning_rate"]  # cosine decay after warmup
    results = storage.read_json(storage.join(out, "results.json"))
    assert results["samples_seen"] == 32 and results["final_loss"] == pytest.approx(logged[-1]["loss"])
    # the published model and processor load back
    model = modeling.load_model(f"{out}/model", for_training=False)
    _assert_vision_frozen(model, frozen=True)
    assert modeling.load_processor(f"{out}/model").tokenizer.eos_token == "<|im_end|>"
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    ckpts = sorted(p.name for p in (tmp_path / "stage" / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-2", "checkpoint-4"]

    # Resume: lose the last checkpoint and the results; the rerun continues from step 2.
    shutil.rmtree(tmp_path / "stage" / "checkpoints" / "checkpoint-4")
    for name in ("_SUCCESS", "results.json", "metrics.jsonl"):
        (tmp_path / "stage" / name).unlink()
    shutil.rmtree(tmp_path / "stage" / "model")
    sft.run(stage(out))
    again = storage.read_manifest(out)
    assert again["samples_seen"] == 32 and again["global_step"] == 4  # 16 restored + 16 trained
    resumed = rows(out)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]  # history restored from the checkpoint, not redone
    assert resumed[3]["loss"] == pytest.approx(logged[3]["loss"], rel=1e-3)


def _assert_vision_frozen(trained, frozen: bool) -> None:
    """LLaMA-Factory's freeze_vision_tower / freeze_multi_modal_projector: visual.* equal to the base
    model's; the language model changed."""
    from job_runtime.builtin.tiny_model import tiny_model_path

    base = dict(modeling.load_model(str(tiny_model_path()), for_training=False).named_parameters())
    params = dict(trained.named_parameters())
    vision = [n for n in params if "visual." in n]
    merger = [n for n in vision if "visual.merger" in n]
    assert vision and merger
    same = [bool((params[n] == base[n]).all()) for n in vision]
    assert all(same) if frozen else not all(same), vision
    language = [n for n in params if "language_model" in n and "layers" in n]
    assert not all(bool((params[n] == base[n]).all()) for n in language)


def test_the_trl_recipe_trains_the_vision_tower(tmp_path):
    out = f"file://{tmp_path}/stage"
    sft.run(stage(out, {**SHORT, "recipe": "trl", "save_steps": 100}, scale=16))
    results = storage.read_json(storage.join(out, "results.json"))
    assert results["recipe"] == "trl" and results["frozen_parameters"] == 0
    _assert_vision_frozen(modeling.load_model(f"{out}/model", for_training=False), frozen=False)


@pytest.mark.slow
def test_qwen2_5_vl_trains_with_sft(tmp_path):
    """The other family: its windowed vision tower and processor through TRL's SFT."""
    out = f"file://{tmp_path}/stage"
    sft.run(stage(out, {**SHORT, "save_steps": 100}, scale=16, model="builtin://tiny-qwen2.5-vl"))
    manifest = storage.read_manifest(out)
    assert manifest["samples_seen"] == 16 and manifest["global_step"] == 2
    logged = rows(out)
    assert len(logged) == 2 and all(3.0 < r["loss"] < 10.0 for r in logged)
    model = modeling.load_model(f"{out}/model", for_training=False)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(modeling.load_processor(f"{out}/model")).__name__ == "TinyQwen2_5_VLProcessor"


@pytest.mark.slow
def test_short_run_s3_output(s3_bucket):
    out = f"{s3_bucket}/stages/sft-test"
    sft.run(stage(out, {**SHORT, "save_steps": 3}))
    manifest = storage.read_manifest(out)
    assert manifest["samples_seen"] == 32 and manifest["global_step"] == 4
    listed = set(storage.list_prefix(out))
    assert {"model/model.safetensors", "model/processor_config.json", "metrics.jsonl", "_SUCCESS"} <= listed
    assert "checkpoints/checkpoint-3/_SUCCESS" in listed
    assert [r["loss"] for r in rows(out)][::3] == pytest.approx([FIRST_LOSS, LAST_LOSS], abs=2e-3)
    assert type(modeling.load_model(f"{out}/model")).__name__ == "Qwen2VLForConditionalGeneration"


# The quickstart's SFT settings (examples/quickstart.yaml): the bar of issue 2.
QUICKSTART = {"epochs": 6, "learning_rate": 3e-3, "global_batch_size": 16, "per_device_batch_size": 16,
              "max_length": 256, "gradient_checkpointing": False, "save_steps": 1000}


def _accuracy(model_uri: str, n: int = 100) -> float:
    from job_runtime.eval.answers import extract_answer, is_correct
    from job_runtime.builtin import synthetic
    from job_runtime.train.heldout import generate_greedy
    from job_runtime.prompts import format_question

    processor, model = modeling.load_processor(model_uri), modeling.load_model(model_uri, for_training=False)
    test = [{"image": r["image"], "answer": r["answer"],
             "prompt": [{"role": "user", "content": format_question(r["question"])}]}
            for r in synthetic.generate("test", n, seed=0)]
    correct = 0
    for i in range(0, n, 50):
        batch = test[i : i + 50]
        outs = generate_greedy(model, processor, batch, max_new_tokens=64)
        correct += sum(is_correct(extract_answer(o), r["answer"]) for o, r in zip(outs, batch))
    return correct / n


@pytest.mark.slow
def test_quickstart_sft_learns_the_synthetic_task(tmp_path):
    out = f"file://{tmp_path}/stage"
    sft.run(stage(out, QUICKSTART, scale=512, seed=1))
    base, tuned = _accuracy("builtin://tiny-qwen2-vl"), _accuracy(f"{out}/model")
    assert base < 0.1
    assert tuned > 0.6, f"SFT accuracy {tuned:.2f} on the held-out synthetic test"
