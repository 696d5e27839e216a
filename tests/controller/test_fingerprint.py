"""Stage ids follow their inputs' content (controller.fingerprint + controller.plan): a training
file edited in place, an object re-uploaded under its key, a new hub revision or a new recipe
version give new ids, and `explain_changes` names what changed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from controller import fingerprint, spec
from controller.plan import build_plan, explain_changes
from job_runtime import contract
from tests.fakes.fake_hf_hub import fake_hub


def experiment(tmp_path: Path, sft: str, model: str = "builtin://tiny-qwen2-vl", rl: str = "builtin://synthetic/rl"):
    raw = {
        "apiVersion": "sftrl/v1", "kind": "Experiment", "metadata": {"name": "fp"},
        "spec": {
            "storage": str(tmp_path / "runs"),
            "models": [{"name": "tiny", "path": model}],
            "data": [{"name": "d", "sft": sft, "rl": rl}],
            "scales": [4], "methods": ["sft", "grpo", "sft+grpo"],
            "sft": {"global_batch_size": 4, "per_device_batch_size": 4},
            "rl": {"global_batch_size": 8, "per_device_batch_size": 8, "num_generations": 4},
            "eval": {"benchmarks": ["synthetic"]},
            "resources": {"default": {"gpus_per_node": 0 if model.startswith("builtin://") else 1, "nodes": 1, "deepspeed": "none"}},
        },
    }
    return spec.validate_dict(raw)


def _plan(exp):
    fp = fingerprint.collect(exp)
    assert fp.problems == []
    return build_plan(exp, fp.values)


def _ids(plan):
    return {r.name: [*r.train, r.eval] for r in plan.runs}


def test_editing_a_training_file_in_place_gives_new_ids_and_names_the_input(tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text('{"question": "How many?", "trace": "<think>2</think> \\\\boxed{2}", "image": "a.png"}\n')
    exp = experiment(tmp_path, str(data))
    before = _plan(exp)
    data.write_text(data.read_text().replace("2", "3"))  # every answer changed, same size
    after = _plan(exp)
    old, new = _ids(before), _ids(after)
    assert old["tiny-base"] == new["tiny-base"] and old["tiny-grpo-d-4-s0"] == new["tiny-grpo-d-4-s0"]
    assert set(old["tiny-sft-d-4-s0"]).isdisjoint(new["tiny-sft-d-4-s0"])
    assert set(old["tiny-sft-grpo-d-4-s0"]).isdisjoint(new["tiny-sft-grpo-d-4-s0"])  # downstream of the new SFT
    why = explain_changes(before.to_json(), after)
    sft = new["tiny-sft-d-4-s0"][0]
    assert why[sft] == f"replaces {old['tiny-sft-d-4-s0'][0]}: input data.train ({data}) changed since the last run"
    assert "its parent changed" in why[new["tiny-sft-d-4-s0"][1]]


def test_touching_a_small_file_keeps_its_id(tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text("{}\n")
    exp = experiment(tmp_path, str(data))
    a = _ids(_plan(exp))
    os.utime(data, (time.time() + 100, time.time() + 100))
    assert _ids(_plan(exp)) == a


def test_a_folder_is_fingerprinted_by_every_file(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.jsonl").write_text("{}\n")
    one = fingerprint.local_fingerprint(folder)
    (folder / "b.jsonl").write_text("{}\n")
    assert fingerprint.local_fingerprint(folder) != one


def test_a_new_recipe_version_gives_new_ids_of_that_kind_only(tmp_path, monkeypatch):
    exp = experiment(tmp_path, "builtin://synthetic/sft")
    before = build_plan(exp)
    monkeypatch.setitem(contract.RECIPE_VERSION, "sft", contract.RECIPE_VERSION["sft"] + 1)
    after = build_plan(exp)
    assert _ids(before)["tiny-base"] == _ids(after)["tiny-base"]
    assert _ids(before)["tiny-grpo-d-4-s0"] == _ids(after)["tiny-grpo-d-4-s0"]
    sft = _ids(after)["tiny-sft-d-4-s0"][0]
    assert sft != _ids(before)["tiny-sft-d-4-s0"][0]
    assert "the sft recipe version changed" in explain_changes(before.to_json(), after)[sft]


def test_an_s3_object_uploaded_again_under_its_key_gives_a_new_id(tmp_path, s3_bucket):
    from job_runtime.io import storage

    uri = f"{s3_bucket}/data/sft.jsonl"
    storage.write_text(uri, '{"a": 1}\n')
    exp = experiment(tmp_path, uri)
    a = _plan(exp)
    storage.write_text(uri, '{"a": 2}\n')
    b = _plan(exp)
    assert _ids(a)["tiny-sft-d-4-s0"][0] != _ids(b)["tiny-sft-d-4-s0"][0]
    storage.write_text(f"{s3_bucket}/folder/x.jsonl", "{}\n")
    fp = fingerprint.collect(experiment(tmp_path, f"{s3_bucket}/folder"))
    assert fp.problems == [] and fp.values[f"{s3_bucket}/folder"].startswith("s3:")
    fp = fingerprint.collect(experiment(tmp_path, f"{s3_bucket}/nothing-here"))
    assert fp.problems == [f"spec.data[0].sft: {s3_bucket}/nothing-here does not exist, because no object is at that "
                           "key or under it. Fix the URI or upload the data"]


def test_hub_ids_resolve_to_their_revision_with_one_request_each(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    repos = {"models/org/vl": "a" * 40, "datasets/org/traces": "b" * 40}
    with fake_hub(repos, gated={"models/org/vl": "tok"}) as (endpoint, hub):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setenv("HF_TOKEN", "tok")
        fp = fingerprint.collect(experiment(tmp_path, "org/traces", model="org/vl"))
        assert fp.problems == [] and fp.values == {"org/vl": "hub:" + "a" * 40, "org/traces": "hub:" + "b" * 40}
        assert len(hub.requests) == 2
        repos_v2 = {"models/org/vl": "c" * 40}
        hub.repos.update(repos_v2)  # a new revision of the model: new ids
        exp = experiment(tmp_path, "org/traces", model="org/vl")
        assert build_plan(exp, fingerprint.collect(exp).values).runs[0].eval != build_plan(exp, fp.values).runs[0].eval
        monkeypatch.delenv("HF_TOKEN")
        fp = fingerprint.collect(experiment(tmp_path, "org/traces", model="org/vl"))
        assert fp.problems == ["spec.models[0].path: 'org/vl' is not a model on the Hugging Face hub (or it is private or "
                               "gated and HF_TOKEN does not open it), and no local path of that name exists. Fix the id, "
                               "set HF_TOKEN, or use a local path"]


def test_an_unreachable_hub_is_asked_once_and_the_cache_used(tmp_path, monkeypatch):
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    calls = []

    def opener(req, timeout):
        calls.append(req.full_url)
        import urllib.request

        return urllib.request.urlopen(req, timeout=timeout)

    ref = cache / "models--org--cached" / "refs"
    ref.mkdir(parents=True)
    (ref / "main").write_text("d" * 40)
    exp = experiment(tmp_path, "org/missing", model="org/cached")
    fp = fingerprint.collect(exp, opener)
    assert len(calls) == 1  # the second id is not asked again
    assert fp.values == {"org/cached": "hub:" + "d" * 40}
    assert fp.problems == [f"spec.data[0].sft: 'org/missing' cannot be resolved, because the hub at http://127.0.0.1:{port} "
                           f"cannot be reached ([Errno 111] Connection refused), and it is not in the local cache ({cache}). "
                           "Check the network or HF_ENDPOINT, or download it first and set HF_HUB_OFFLINE=1, or use a local "
                           "path or s3://"]
    assert "using the cached revision dddddddddddd of 'org/cached'" in fp.notes[0]


def test_offline_mode_reads_only_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    fp = fingerprint.collect(experiment(tmp_path, "builtin://synthetic/sft", model="org/vl"), opener=None)  # never called
    assert "is not in the local Hugging Face cache" in fp.problems[0] and "HF_HUB_OFFLINE forbids the hub" in fp.problems[0]


@pytest.mark.parametrize("uri,where", [("./nope.jsonl", "spec.data[0].sft"), ("data/nope.jsonl", "spec.data[0].sft")])
def test_a_missing_local_path_is_a_problem_naming_the_field(tmp_path, uri, where):
    fp = fingerprint.collect(experiment(tmp_path, uri))
    assert len(fp.problems) == 1 and fp.problems[0].startswith(f"{where}: {uri} does not exist, because no file or folder is at ")
