"""The operator and the `sftrl submit/status/logs/cancel/operator` commands against the FAKE API
server (tests/fakes/fake_kube_apiserver.py): status, events, shared stages, the durability rules
(TTL, garbage collection, lingering deletion, conflicts). Crashes and SIGKILLs: test_operator_crashes.py."""

from __future__ import annotations

import os
import time

import pytest
import yaml

from controller.kubernetes import rbac, render
from controller.kubernetes.operator import ClusterDefaults, Operator
from controller.plan import build_plan
from controller.spec import validate_dict
from job_runtime.io import storage
from tests.fakes.fake_kube_apiserver import EVENTS, EXPERIMENTS, JOBS, FakeKubeApiServer
from tests.fakes.kube import connect, experiment_schema, submit, tiny_spec

TERMINAL = ("Succeeded", "Failed", "Cancelled")


def _plan(spec, name="demo"):
    return build_plan(validate_dict({"metadata": {"name": name}, "spec": spec}))


def _name(plan, sid, attempt=1):
    return render.stage_job_name(plan.stages[sid], attempt)


def _status(fake, name="demo", ns="default"):
    return (fake.get(EXPERIMENTS, ns, name) or {}).get("status") or {}


def _drive(op, fake, names=("demo",), cycles=300):
    for _ in range(cycles):
        op.cycle()
        if all(_status(fake, n).get("phase") in TERMINAL for n in names):
            return
        time.sleep(0.03)
    raise AssertionError(f"not finished: {[_status(fake, n) for n in names]}")


def _rbac_ok(fake):
    used = {(r.group, r.resource, r.verb) for r in fake.calls("sftrl-operator")}
    assert used, "the operator made no calls"
    assert {u for u in used if not rbac.allowed(*u)} == set()
    return used


@pytest.fixture
def fake():
    srv = FakeKubeApiServer(job_seconds=0.05, start_delay=0.02).start()
    yield srv
    srv.stop()


def test_operator_runs_an_experiment_and_writes_a_schema_valid_status(fake, tmp_path):
    import jsonschema

    from controller.kubernetes.metrics import OperatorMetrics

    spec = tiny_spec(f"file://{tmp_path}/store")
    submit(fake, "demo", spec)
    metrics = OperatorMetrics()
    op = Operator(connect(fake, tmp_path), "default", metrics=metrics, defaults=ClusterDefaults())
    _drive(op, fake)
    plan = _plan(spec)
    st = _status(fake)
    assert st["phase"] == "Succeeded" and st["observedGeneration"] == 1
    assert st["counts"] == {"total": 9, "pending": 0, "running": 0, "succeeded": 9, "failed": 0, "skipped": 0}
    assert st["stages"] == {sid: "succeeded" for sid in plan.stages}
    assert {c["type"]: c["status"] for c in st["conditions"]} == {"Valid": "True", "Complete": "True", "Degraded": "False"}
    obj = fake.get(EXPERIMENTS, "default", "demo")
    jsonschema.validate(obj, experiment_schema())
    for s in fake.status_history["demo"]:  # every status written, not only the last
        jsonschema.validate({**obj, "status": s}, experiment_schema())
    assert set(fake.creates) == {_name(plan, s) for s in plan.stages} and set(fake.creates.values()) == {1}
    reasons = [e["reason"] for e in fake.objects(EVENTS)]
    assert reasons.count("StageLaunched") == 9 and reasons.count("StageSucceeded") == 9
    assert metrics.registry.get_sample_value("sftrl_operator_stages", {"experiment": "demo", "state": "succeeded"}) == 9
    _rbac_ok(fake)


def test_cycle_api_calls_do_not_grow_with_stages(fake, tmp_path):
    fake.job_seconds = 3600  # jobs stay running: a steady-state cycle
    big = tiny_spec(f"file://{tmp_path}/a", seeds=list(range(30)))
    submit(fake, "big", big)
    op = Operator(connect(fake, tmp_path), "default", defaults=ClusterDefaults(), max_actions=10)
    op.cycle()
    n = len(fake.calls())
    op.cycle()
    steady = fake.calls()[n:]
    assert len(_plan(big, "big").stages) > 150
    assert sorted((r.verb, r.resource) for r in steady) == [("list", "experiments"), ("list", "pytorchjobs")]


def test_shared_stage_is_one_job_and_cancel_spares_it(fake, tmp_path):
    fake.job_seconds = 3600
    store = f"file://{tmp_path}/store"
    a, b = tiny_spec(store, methods=["sft"]), tiny_spec(store, methods=["sft+grpo"])
    plan = _plan(a)
    sft = next(s for s in plan.stages.values() if s.kind == "sft").id
    assert sft in _plan(b).stages  # the same content-addressed stage
    submit(fake, "exp-a", a)
    submit(fake, "exp-b", b)
    op = Operator(connect(fake, tmp_path), "default", defaults=ClusterDefaults())
    for _ in range(3):
        op.cycle()
    assert fake.creates[_name(plan, sft)] == 1
    assert _status(fake, "exp-a")["stages"][sft] == _status(fake, "exp-b")["stages"][sft] == "running"
    base_eval = next(s for s in _plan(a).stages.values() if s.kind == "eval" and not s.parents).id
    # cancel exp-b: its jobs stop, except those exp-a still needs (sft and the base eval)
    fake.store[EXPERIMENTS][("default", "exp-b")]["metadata"]["annotations"] = {"sftrl.io/cancel": "true"}
    op.cycle()
    assert _status(fake, "exp-b")["phase"] == "Cancelled"
    assert fake.get(JOBS, "default", _name(plan, sft)) is not None
    assert fake.get(JOBS, "default", _name(plan, base_eval)) is not None
    fake.store[EXPERIMENTS][("default", "exp-a")]["metadata"]["annotations"] = {"sftrl.io/cancel": "true"}
    op.cycle()
    assert fake.get(JOBS, "default", _name(plan, sft)) is None
    assert _status(fake, "exp-a")["phase"] == "Cancelled"


def test_retry_after_infrastructure_failure_and_stop_after_code_failure(fake, tmp_path):
    spec = tiny_spec(f"file://{tmp_path}/store")
    plan = _plan(spec)
    sft = next(s for s in plan.stages.values() if s.kind == "sft").id
    rl = next(s for s in plan.stages.values() if s.kind == "rl" and not s.parents).id
    fake.exit_codes = {_name(plan, sft): 200, _name(plan, rl): 1}
    submit(fake, "demo", spec)
    _drive(Operator(connect(fake, tmp_path), "default", defaults=ClusterDefaults()), fake)
    st = _status(fake)
    assert st["phase"] == "Failed"
    assert st["stages"][sft] == "succeeded" and fake.creates[_name(plan, sft, 2)] == 1  # second attempt
    assert st["stages"][rl] == "failed" and _name(plan, rl, 2) not in fake.creates  # exit 1: no retry
    downstream = [s for s, v in plan.stages.items() if rl in v.parents]
    assert downstream and all(st["stages"][s] == "pending" for s in downstream)
    assert st["counts"]["failed"] == 1
    assert any(e["reason"] == "StageFailed" and e["type"] == "Warning" for e in fake.objects(EVENTS))


def test_invalid_spec_is_reported_on_status_and_as_event(fake, tmp_path):
    spec = tiny_spec(f"file://{tmp_path}/store")
    spec["rl"] = {"num_generations": 1}
    spec["kubernetes"] = {"queue": "Not A Label"}
    submit(fake, "demo", spec)
    Operator(connect(fake, tmp_path), "default", defaults=ClusterDefaults()).cycle()
    st = _status(fake)
    valid = next(c for c in st["conditions"] if c["type"] == "Valid")
    assert st["phase"] == "Failed" and valid["status"] == "False" and valid["reason"] == "SpecInvalid"
    assert "spec.rl.num_generations" in valid["message"]
    assert [e["reason"] for e in fake.objects(EVENTS)] == ["SpecInvalid"] and not fake.creates


def test_permanent_api_error_becomes_degraded_condition(fake, tmp_path):
    spec = tiny_spec(f"file://{tmp_path}/store")
    plan = _plan(spec)
    first = next(iter(plan.stages))
    fake.reject_creates[_name(plan, first)] = (403, "admission webhook denied the request: no GPUs for you")
    submit(fake, "demo", spec)
    op = Operator(connect(fake, tmp_path), "default", defaults=ClusterDefaults())
    op.cycle()
    op.cycle()
    deg = next(c for c in _status(fake)["conditions"] if c["type"] == "Degraded")
    assert deg["status"] == "True" and "no GPUs for you" in deg["message"] and "403" in deg["message"]
    warnings = [e for e in fake.objects(EVENTS) if e["type"] == "Warning"]
    assert len(warnings) == 1 and warnings[0]["involvedObject"]["name"] == "demo"


def test_cluster_defaults_fill_what_the_experiment_leaves_out(fake, tmp_path):
    spec = tiny_spec(f"file://{tmp_path}/store")
    del spec["storage"]
    submit(fake, "demo", spec)
    d = ClusterDefaults.from_env({"SFTRL_STORAGE": f"file://{tmp_path}/cluster", "SFTRL_QUEUE": "team-q",
                                  "SFTRL_STORAGE_SECRET": "s3-creds", "AWS_ENDPOINT_URL_S3": "http://minio:9000"})
    Operator(connect(fake, tmp_path), "default", defaults=d).cycle()
    job = fake.objects(JOBS)[0]
    c = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert job["metadata"]["labels"][render.QUEUE_LABEL] == "team-q"
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert {"name": "AWS_ENDPOINT_URL_S3", "value": "http://minio:9000"} in c["env"]
    assert c["command"][-1].startswith(f"file://{tmp_path}/cluster/stages/")


# --- durability: TTL, garbage collection, lingering deletion, conflicts ------------------------------------


def _cycle_for(op, seconds, pause=0.03):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        op.cycle()
        time.sleep(pause)


def test_a_ttl_deleted_failed_job_is_never_recreated(fake, tmp_path):
    fake.ttl_seconds = 0.3  # the training operator deletes finished jobs 0.3 s after they end
    spec = tiny_spec(f"file://{tmp_path}/store", execution={"max_parallel": 4, "max_attempts": 2, "backoff_seconds": 0})
    plan = _plan(spec)
    sft = next(s for s in plan.stages.values() if s.kind == "sft").id
    rl = next(s for s in plan.stages.values() if s.kind == "rl" and not s.parents).id
    fake.stage_exit_codes = {rl: 1, sft: 200}  # rl: a code failure; sft: infrastructure, every attempt
    submit(fake, "demo", spec)
    op = Operator(connect(fake, tmp_path), "default", defaults=ClusterDefaults())
    _drive(op, fake)
    assert _status(fake)["phase"] == "Failed"
    _cycle_for(op, 2.0)  # long after every job is gone
    gone = {name for name, why, _ in fake.gone if why == "ttl"}
    assert _name(plan, rl) in gone and _name(plan, sft, 2) in gone
    assert all(len(uids) == 1 for uids in fake.created_uids.values()), fake.created_uids  # none recreated
    st = _status(fake)
    assert st["phase"] == "Failed" and st["stages"][rl] == st["stages"][sft] == "failed"
    assert st["attempts"][rl] == {"attempt": 1, "state": "failed", "retryable": False, "exitCode": 1,
                                  "reason": "PyTorchJobFailed", "finishedAt": st["attempts"][rl]["finishedAt"]}
    assert st["attempts"][sft]["attempt"] == 2 and st["attempts"][sft]["reason"] == "BackoffLimitExceeded"
    assert fake.creates[_name(plan, rl)] == 1 and _name(plan, rl, 2) not in fake.creates  # code failure: once
    assert _name(plan, sft, 3) not in fake.creates  # max_attempts 2, whatever the TTL deleted
    assert all(len(uids) == 1 for uids in fake.created_uids.values())
    phases = [h.get("phase") for h in fake.status_history["demo"]]
    assert "Running" not in phases[phases.index("Failed"):]  # a Failed experiment stays Failed


def test_an_experiment_submitted_later_inherits_a_shared_stage_s_failure(fake, tmp_path):
    fake.ttl_seconds = 0.2
    store = f"file://{tmp_path}/store"
    a, b = tiny_spec(store, methods=["sft"]), tiny_spec(store, methods=["sft+grpo"])
    plan = _plan(a)
    sft = next(s for s in plan.stages.values() if s.kind == "sft").id
    fake.stage_exit_codes = {sft: 1}
    submit(fake, "exp-a", a)
    op = Operator(connect(fake, tmp_path), "default", defaults=ClusterDefaults())
    _drive(op, fake, names=("exp-a",))
    _cycle_for(op, 0.6)
    assert _name(plan, sft) in {name for name, why, _ in fake.gone}
    submit(fake, "exp-b", b)  # needs the same sft stage, whose job has expired
    _drive(op, fake, names=("exp-b",))
    assert _status(fake, "exp-b")["stages"][sft] == "failed" and fake.creates[_name(plan, sft)] == 1
    assert _status(fake, "exp-b")["attempts"][sft]["exitCode"] == 1  # now recorded in exp-b too


def test_deleting_an_experiment_garbage_collects_its_jobs_but_not_shared_ones(fake, tmp_path):
    fake.job_seconds = 3600
    store = f"file://{tmp_path}/store"
    a, b = tiny_spec(store, methods=["sft"]), tiny_spec(store, methods=["grpo"])
    plan_a, plan_b = _plan(a), _plan(b)
    submit(fake, "exp-a", a)
    submit(fake, "exp-b", b)
    op = Operator(connect(fake, tmp_path), "default", defaults=ClusterDefaults())
    for _ in range(3):
        op.cycle()
    shared = set(plan_a.stages) & set(plan_b.stages)
    only_a = set(plan_a.stages) - shared
    live = {j["metadata"]["name"]: j for j in fake.objects(JOBS)}
    uid = {n: fake.get(EXPERIMENTS, "default", n)["metadata"]["uid"] for n in ("exp-a", "exp-b")}
    for sid in shared:  # the base eval: needed by both, owned by both
        assert {r["uid"] for r in live[_name(plan_a, sid)]["metadata"]["ownerReferences"]} == set(uid.values())
    started_a = [sid for sid in only_a if _name(plan_a, sid) in live]
    assert started_a
    fake.delete(EXPERIMENTS, ("default", "exp-a"), "deleted")
    assert _wait(lambda: all(fake.get(JOBS, "default", _name(plan_a, sid)) is None for sid in started_a))
    assert all(fake.get(JOBS, "default", _name(plan_a, sid)) is not None for sid in shared)
    assert {why for _, why, _ in fake.gone} == {"garbage-collected"}
    fake.delete(EXPERIMENTS, ("default", "exp-b"), "deleted")
    assert _wait(lambda: fake.objects(JOBS) == [])


def _wait(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_a_job_deleted_by_hand_lingers_and_only_then_is_retried(fake, tmp_path):
    fake.job_seconds, fake.terminating_seconds = 3600, 1.0
    spec = tiny_spec(f"file://{tmp_path}/store", methods=["sft"])
    plan = _plan(spec)
    sft = next(s for s in plan.stages.values() if s.kind == "sft").id
    submit(fake, "demo", spec)
    op = Operator(connect(fake, tmp_path), "default", defaults=ClusterDefaults())
    for _ in range(3):
        op.cycle()
    fake.delete(JOBS, ("default", _name(plan, sft)), "deleted")  # `kubectl delete pytorchjob ...`
    _cycle_for(op, 0.5)
    assert fake.get(JOBS, "default", _name(plan, sft))["metadata"]["deletionTimestamp"]
    assert _name(plan, sft, 2) not in fake.creates  # its pods may still write: nothing new yet
    assert _wait(lambda: op.cycle() and _name(plan, sft, 2) in fake.creates, timeout=15)
    assert fake.overlaps == []
    assert _status(fake)["attempts"][sft]["attempt"] == 2


def test_status_writes_are_conditional_and_survive_conflicts(fake, tmp_path):
    fake.status_conflict_rate = 0.3  # another writer wins a third of the writes
    fake.ttl_seconds = 0.5
    spec = tiny_spec(f"file://{tmp_path}/store")
    plan = _plan(spec)
    rl = next(s for s in plan.stages.values() if s.kind == "rl" and not s.parents).id
    fake.stage_exit_codes = {rl: 1}
    submit(fake, "demo", spec)
    op = Operator(connect(fake, tmp_path), "default", defaults=ClusterDefaults())
    _drive(op, fake, cycles=600)
    _cycle_for(op, 1.5)
    patches = [r for r in fake.calls() if r.verb == "patch" and r.resource == "experiments/status"]
    assert any(r.status == 409 for r in patches) and any(r.status == 200 for r in patches)
    st = _status(fake)
    assert st["phase"] == "Failed" and st["attempts"][rl]["exitCode"] == 1 and fake.overlaps == []
    assert all(len(uids) == 1 for uids in fake.created_uids.values())


# --- the CLI ---------------------------------------------------------------------------------------------


def _cli(*args: str) -> int:
    from controller.kubernetes.cli import main

    return main(list(args))


def test_submit_status_logs_cancel(fake, tmp_path, capsys, monkeypatch):
    kc = str(fake.write_kubeconfig(tmp_path / "kc"))
    monkeypatch.setenv("KUBECONFIG", kc)
    for k in [k for k in os.environ if k.startswith("SFTRL_")]:
        monkeypatch.delenv(k)
    f = tmp_path / "exp.yaml"
    raw = {"apiVersion": "sftrl/v1", "kind": "Experiment", "metadata": {"name": "demo"},
           "spec": tiny_spec(f"file://{tmp_path}/store", methods=["sft"])}
    f.write_text(yaml.safe_dump(raw))
    assert _cli("submit", str(f), "-n", "default") == 0
    assert "created in namespace default: 3 stages" in capsys.readouterr().out
    assert _cli("submit", str(f), "-n", "default") == 0
    assert "unchanged" in capsys.readouterr().out
    raw["spec"]["seeds"] = [0, 1]
    f.write_text(yaml.safe_dump(raw))
    assert _cli("submit", str(f), "-n", "default", "--watch", "--interval", "0.05") == 0
    out = capsys.readouterr().out
    assert "updated" in out and "experiment demo: Succeeded" in out
    obj = fake.get(EXPERIMENTS, "default", "demo")
    assert obj["metadata"]["generation"] == 2 and obj["status"]["observedGeneration"] == 2
    assert _cli("status", "demo") == 0
    table = capsys.readouterr().out
    plan = _plan(raw["spec"])
    for sid, st in plan.stages.items():
        assert any(line.split()[:2] == [sid, st.kind] and line.split()[-2:] == ["succeeded", "1"]
                   for line in table.splitlines()), table
    sid = next(iter(plan.stages))
    assert _cli("logs", "demo", sid[:8]) == 0
    assert f"{_name(plan, sid)}: exit 0" in capsys.readouterr().out
    assert _cli("cancel", "demo") == 0
    assert fake.get(EXPERIMENTS, "default", "demo")["metadata"]["annotations"] == {
        "sftrl.io/cancel": "true", "sftrl.io/inputs": "{}"}  # builtin:// inputs only: nothing to fingerprint
    capsys.readouterr()
    assert _cli("logs", "demo", "nope") == 2 and "matches no stage" in capsys.readouterr().err


def test_cli_errors_are_one_clear_line(fake, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert _cli("status", "demo") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach a Kubernetes API, because") and "Set KUBECONFIG" in err
    monkeypatch.setenv("KUBECONFIG", str(fake.write_kubeconfig(tmp_path / "kc")))
    assert _cli("status", "nosuch") == 2 and "was not found in namespace default" in capsys.readouterr().err
    fake.crds.discard("experiments")
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump({"apiVersion": "sftrl/v1", "kind": "Experiment", "metadata": {"name": "demo"},
                                 "spec": tiny_spec(f"file://{tmp_path}/store")}))
    assert _cli("submit", str(f)) == 2
    err = capsys.readouterr().err
    assert "CRD is not installed" in err and "manifests/crds/sftrl.io_experiments.yaml" in err
    assert "Traceback" not in err


def test_operator_command_runs_one_cycle(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(fake.write_kubeconfig(tmp_path / "kc")))
    monkeypatch.setenv("SFTRL_WATCH_NAMESPACE", "")  # the chart's cluster scope: all namespaces
    submit(fake, "demo", tiny_spec(f"file://{tmp_path}/store"), namespace="team")
    assert _cli("operator", "--once", "--metrics-port", "0") == 0
    assert _status(fake, ns="team")["phase"] == "Running"
    assert {j["metadata"]["namespace"] for j in fake.objects(JOBS)} == {"team"}


def test_healthz_tracks_cycles_even_without_experiments(fake, tmp_path):
    import urllib.error
    import urllib.request

    from controller.kubernetes.metrics import OperatorMetrics

    metrics = OperatorMetrics()
    server = metrics.serve(0, addr="127.0.0.1", max_cycle_age_s=0.3)
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        time.sleep(0.4)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}/healthz")
        assert e.value.code == 503  # no cycle within 0.3 s
        Operator(connect(fake, tmp_path), "default", metrics=metrics, defaults=ClusterDefaults()).cycle()
        assert urllib.request.urlopen(f"{url}/healthz").status == 200
        body = urllib.request.urlopen(f"{url}/metrics").read().decode()
        assert "sftrl_operator_api_errors_total" in body
    finally:
        server.shutdown()


def test_docstring_examples():
    import doctest

    from controller.kubernetes import attempts, operator, render

    for mod in (render, attempts, operator):
        result = doctest.testmod(mod)
        assert result.failed == 0 and result.attempted > 0, mod.__name__


def test_min_signal_skips_a_starved_rl_stage_and_status_says_why(fake, tmp_path, capsys, monkeypatch):
    """rl.min_signal on a cluster: the probe (already in storage: level-triggered) predicts 0.02, so the
    RL stage and its eval are skipped, not failed, with the reason on the status, in an event and in
    `sftrl status`; the experiment succeeds."""
    import jsonschema

    spec = tiny_spec(f"file://{tmp_path}/store", methods=["grpo"], rl={"min_signal": 0.1})
    plan = _plan(spec)
    probe = next(s for s in plan.stages.values() if s.kind == "probe")
    rl = next(s for s in plan.stages.values() if s.kind == "rl")
    done = tmp_path / "probe-out"
    done.mkdir()
    (done / "results.json").write_text('{"kind": "probe", "mixed_share": 0.02, "prompts": 50, "samples": 10}')
    storage.publish(done, probe.config.output, kind="probe")
    submit(fake, "demo", spec)
    _drive(Operator(connect(fake, tmp_path), "default", defaults=ClusterDefaults()), fake)
    st = _status(fake)
    evals = [s.id for s in plan.stages.values() if s.kind == "eval" and s.parents == (rl.id,)]
    assert st["phase"] == "Succeeded"
    assert st["stages"][rl.id] == "skipped" and st["stages"][evals[0]] == "skipped"
    assert st["skipped"][rl.id] == "starved: 0.02 of prompts had mixed outcomes (rl.min_signal 0.1)"
    assert st["counts"]["skipped"] == 2 and st["counts"]["failed"] == 0
    assert render.stage_job_name(probe) not in fake.creates and render.stage_job_name(rl) not in fake.creates
    assert any(e["reason"] == "StageSkipped" and "starved: 0.02" in e["message"] for e in fake.objects(EVENTS))
    jsonschema.validate(fake.get(EXPERIMENTS, "default", "demo"), experiment_schema())

    monkeypatch.setenv("KUBECONFIG", str(fake.write_kubeconfig(tmp_path / "kc")))
    assert _cli("status", "demo") == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(rl.id))
    assert "skipped" in line and "starved: 0.02 of prompts had mixed outcomes" in line


def test_a_truncated_artifact_runs_its_stage_again_and_the_status_names_the_file(fake, tmp_path):
    """As locally (storage.is_complete): a _SUCCESS whose file lost bytes is not done on a cluster."""
    from job_runtime.io import storage

    spec = tiny_spec(f"file://{tmp_path}/store", methods=["sft"])
    plan = _plan(spec)
    sid = next(iter(plan.stages))
    out = plan.stages[sid].config.output
    storage.write_text(storage.join(out, "results.json"), "{}")
    storage.write_json(storage.join(out, "_SUCCESS"), {"files": {"results.json": {"size": 200}}})
    submit(fake, "demo", spec)
    op = Operator(connect(fake, tmp_path), "default", defaults=ClusterDefaults())
    op.cycle()
    why = f"stage {sid} is not done, because results.json is 2 bytes, but its _SUCCESS manifest says 200"
    degraded = next(c for c in _status(fake)["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "ArtifactsIncomplete" and why in degraded["message"]
    assert any(e["reason"] == "StageIncomplete" and e["message"].startswith(why) for e in fake.objects(EVENTS))
    assert _name(plan, sid) in {j["metadata"]["name"] for j in fake.objects(JOBS)}  # it runs again
    _drive(op, fake)
    st = _status(fake)
    assert st["phase"] == "Succeeded" and storage.is_complete(out)
    assert next(c for c in st["conditions"] if c["type"] == "Degraded")["status"] == "False"
