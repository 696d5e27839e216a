"""job_runtime.recipes: the controller's copy of TRL's defaults is TRL's, and every key the
resolution sets is a real field of TRL's config (so `sftrl plan --explain` tells the truth about
what differs from TRL without importing it)."""

from __future__ import annotations

import dataclasses

import pytest

from job_runtime.contract import RLParams, SFTParams
from job_runtime.recipes import TRL_GRPO_DEFAULTS, TRL_SFT_DEFAULTS, resolve_rl, resolve_sft


def _defaults(config_cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(config_cls) if f.default is not dataclasses.MISSING}


@pytest.mark.parametrize("name", ["grpo", "sft"])
def test_trl_defaults_are_trls(name):
    from trl import GRPOConfig, SFTConfig

    cls, ours = (GRPOConfig, TRL_GRPO_DEFAULTS) if name == "grpo" else (SFTConfig, TRL_SFT_DEFAULTS)
    theirs = _defaults(cls)
    assert {k: theirs.get(k, "<not a field>") for k in ours} == ours


@pytest.mark.parametrize("recipe", ["easyr1", "trl"])
@pytest.mark.parametrize("algorithm", ["grpo", "dapo"])
def test_every_resolved_rl_field_is_known(recipe, algorithm):
    r = resolve_rl(RLParams(recipe=recipe), algorithm, world_size=8)
    assert set(r.trl) <= set(TRL_GRPO_DEFAULTS)


@pytest.mark.parametrize("recipe", ["llamafactory", "trl"])
def test_every_resolved_sft_field_is_known(recipe):
    r = resolve_sft(SFTParams(recipe=recipe), world_size=8)
    assert set(r.trl) <= set(TRL_SFT_DEFAULTS)
