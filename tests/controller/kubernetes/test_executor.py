"""The Kubernetes executor against the FAKE API server (tests/fakes/fake_kube_apiserver.py):
idempotent creates, one list per observe, condition mapping, transient vs permanent errors."""

from __future__ import annotations

import time

import pytest

from controller.kubernetes import render
from controller.kubernetes import executor as k8s
from controller.kubernetes.operator import experiment_of
from controller.plan import build_plan
from controller.reconcile import Delete, Launch, Observed, State
from job_runtime.io import storage
from tests.fakes.fake_kube_apiserver import JOBS, FakeKubeApiServer
from tests.fakes.kube import connect, experiment_cr, tiny_spec


@pytest.fixture
def fake():
    srv = FakeKubeApiServer(job_seconds=0.1).start()
    yield srv
    srv.stop()


def _setup(fake, tmp_path, **api_kw):
    api = connect(fake, tmp_path, **api_kw)
    exp = experiment_of(experiment_cr("demo", tiny_spec(f"file://{tmp_path}/store")))
    return api, exp, build_plan(exp)


def _wait(pred, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


# --- pure mapping of job conditions -------------------------------------------------------------------


def _job(*conds, reason=None):
    return {"metadata": {"name": "sftrl-sft-0123456789ab", "namespace": "default"},
            "status": {"conditions": [{"type": t, "status": s, "reason": reason or f"PyTorchJob{t}",
                                       "lastTransitionTime": "2025-01-01T00:00:00Z"} for t, s in conds]}}


@pytest.mark.parametrize("conds,expected", [
    ([("Created", "True")], State.RUNNING),
    ([("Created", "True"), ("Suspended", "True")], State.RUNNING),  # queued by Kueue
    ([("Created", "True"), ("Running", "True")], State.RUNNING),
    ([("Created", "True"), ("Running", "False"), ("Restarting", "True")], State.RUNNING),
    ([("Created", "True"), ("Running", "False"), ("Succeeded", "True")], State.FAILED),  # no _SUCCESS
    ([("Created", "True"), ("Running", "False"), ("Failed", "True")], State.FAILED),
])
def test_conditions_map_to_states(conds, expected):
    o = k8s.observe_stage({1: _job(*conds)}, done=False)
    assert o.state is expected and o.attempts == 1


def test_success_manifest_decides_completion_whatever_the_job_says():
    assert k8s.observe_stage({}, done=True).state is State.SUCCEEDED
    assert k8s.observe_stage({2: _job(("Running", "True"))}, done=True) == Observed(State.SUCCEEDED, 2)
    assert k8s.observe_stage({}, done=False) == Observed(State.PENDING, 0)


@pytest.mark.parametrize("reason,code,retryable", [
    ("PyTorchJobFailed", 1, False), ("PyTorchJobFailed", 2, False), ("PyTorchJobFailed", 127, False),
    ("PyTorchJobFailed", 137, True), ("PyTorchJobFailed", 200, True), ("PyTorchJobFailed", None, True),
    ("BackoffLimitExceeded", None, True), ("DeadlineExceeded", None, False),
])
def test_failed_exit_codes_decide_retryability(reason, code, retryable):
    o = k8s.observe_stage({1: _job(("Failed", "True"), reason=reason)}, done=False, exit_code=lambda j: code)
    assert o.state is State.FAILED and o.retryable is retryable
    assert o.finished_at == 1735689600.0


def test_latest_attempt_decides():
    jobs = {1: _job(("Failed", "True")), 2: _job(("Running", "True"))}
    assert k8s.observe_stage(jobs, done=False, exit_code=lambda j: 1) == Observed(State.RUNNING, 2)


# --- against the fake API server -----------------------------------------------------------------------


def test_launch_writes_stage_json_first_and_creates_once(fake, tmp_path):
    api, exp, plan = _setup(fake, tmp_path)
    sid = next(iter(plan.stages))
    ex = k8s.K8sExecutor(api, exp, "default")
    ex.observe(plan)
    ex.apply(plan, [Launch(sid, 1)])
    cfg = storage.read_json(render.config_uri(plan.stages[sid]))
    assert cfg["id"] == sid and cfg["metrics_port"] == render.METRICS_PORT
    # a restarted controller that has not observed yet applies the same launch again: 409, no new job
    again = k8s.K8sExecutor(api, exp, "default")
    again.apply(plan, [Launch(sid, 1)])
    assert fake.creates == {render.job_name(sid): 1} and fake.conflicts == {render.job_name(sid): 1}
    assert fake.config_missing_at_create == []
    job = fake.get(JOBS, "default", render.job_name(sid))
    assert job["metadata"]["labels"]["sftrl.io/stage"] == sid
    assert again.observe(plan)[sid].state is State.RUNNING


def test_observe_is_one_list_call_whatever_the_number_of_stages(fake, tmp_path):
    fake.job_seconds = 3600
    api, exp, plan = _setup(fake, tmp_path)
    ex = k8s.K8sExecutor(api, exp, "default")
    ex.apply(plan, [Launch(s, 1) for s in list(plan.stages)[:3]])
    before = len(fake.calls())
    observed = ex.observe(plan)
    assert len(fake.calls()) - before == 1 and len(observed) == len(plan.stages) == 9
    assert sum(o.state is State.RUNNING for o in observed.values()) == 3


def test_jobs_progress_to_success_from_storage(fake, tmp_path):
    api, exp, plan = _setup(fake, tmp_path)
    sid = next(iter(plan.stages))
    ex = k8s.K8sExecutor(api, exp, "default")
    ex.apply(plan, [Launch(sid, 1)])
    assert _wait(lambda: ex.observe(plan)[sid].state is State.SUCCEEDED)
    assert storage.is_complete(plan.stages[sid].config.output)
    # completion needs no job: a stage finished elsewhere (or whose job expired) stays done
    fake.store[JOBS].clear()
    assert ex.observe(plan)[sid] == Observed(State.SUCCEEDED, 0)


def test_failed_jobs_code_vs_infrastructure(fake, tmp_path):
    api, exp, plan = _setup(fake, tmp_path)
    code_fail, infra_fail = list(plan.stages)[:2]
    fake.exit_codes = {render.job_name(code_fail): 1, render.job_name(infra_fail): 200}
    ex = k8s.K8sExecutor(api, exp, "default")
    ex.apply(plan, [Launch(code_fail, 1), Launch(infra_fail, 1)])
    assert _wait(lambda: all(o.state is State.FAILED for s, o in ex.observe(plan).items()
                             if s in (code_fail, infra_fail)))
    obs = ex.observe(plan)
    assert obs[code_fail].retryable is False  # exit 1: the operator's pods list gave the code
    assert obs[infra_fail].retryable is True  # exit 200: restarted to backoffLimit, then failed
    job = fake.get(JOBS, "default", render.job_name(infra_fail))
    assert [c["reason"] for c in job["status"]["conditions"] if c["type"] == "Failed"] == ["BackoffLimitExceeded"]
    # the retry is a new job with its own name; the failed one is kept for its logs
    ex.apply(plan, [Launch(infra_fail, 2)])
    assert fake.creates[render.job_name(infra_fail, 2)] == 1
    assert ex.observe(plan)[infra_fail] == Observed(State.RUNNING, 2)


def test_transient_errors_are_retried(tmp_path):
    fake = FakeKubeApiServer(transient_rate=0.4, ambiguous_create_rate=0.5, seed=3, job_seconds=60).start()
    try:
        errors = []
        api, exp, plan = _setup(fake, tmp_path, retries=8, on_error=errors.append)
        ex = k8s.K8sExecutor(api, exp, "default")
        ex.apply(plan, [Launch(s, 1) for s in plan.stages])
        assert all(o.state is State.RUNNING for o in ex.observe(plan).values())
        assert "transient" in errors and "permanent" not in errors
        assert set(fake.creates.values()) == {1}  # a 500 after a stored create came back as 409
        assert sum(fake.conflicts.values()) >= 1
    finally:
        fake.stop()


def test_permanent_rejection_is_reported_and_not_retried_in_a_loop(fake, tmp_path):
    api, exp, plan = _setup(fake, tmp_path)
    sid = next(iter(plan.stages))
    fake.reject_creates[render.job_name(sid)] = (403, 'exceeded quota: gpu-quota, requested: nvidia.com/gpu=8')
    events = []
    ex = k8s.K8sExecutor(api, exp, "default", events=lambda *e: events.append(e))
    ex.apply(plan, [Launch(sid, 1)])
    assert "exceeded quota" in ex.rejected[sid] and "403" in ex.rejected[sid]
    assert events and events[0][:2] == ("Warning", "LaunchRejected")
    creates = [r for r in fake.calls() if r.verb == "create"]
    ex.apply(plan, [Launch(sid, 1)])  # cooling down: no second request
    assert [r for r in fake.calls() if r.verb == "create"] == creates and len(creates) == 1


def test_delete_stops_running_jobs_only(fake, tmp_path):
    api, exp, plan = _setup(fake, tmp_path)
    a, b = list(plan.stages)[:2]
    ex = k8s.K8sExecutor(api, exp, "default")
    ex.apply(plan, [Launch(a, 1), Launch(b, 1)])
    ex.observe(plan)
    ex.apply(plan, [Delete(a)])
    assert fake.get(JOBS, "default", render.job_name(a)) is None
    assert fake.get(JOBS, "default", render.job_name(b)) is not None
    assert ex.observe(plan)[a].state is State.PENDING


def test_unreachable_api_and_missing_kubeconfig_say_what_to_do(tmp_path):
    fake = FakeKubeApiServer().start()
    api, exp, plan = _setup(fake, tmp_path, retries=2)
    fake.stop()
    with pytest.raises(k8s.ApiUnavailable, match="cannot reach a Kubernetes API, because list pytorchjobs failed 3 times"):
        k8s.K8sExecutor(api, exp, "default").observe(plan)
    with pytest.raises(k8s.ApiUnavailable, match=r"cannot reach a Kubernetes API, because .*Set KUBECONFIG"):
        k8s.connect(str(tmp_path / "no-such-kubeconfig"))


def test_completion_listing_on_s3(tmp_path, monkeypatch):
    """The remote branch of ClusterView: one listing of stages/ (real moto S3 server)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://{host}:{port}")
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        for k, v in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(k, v)
        import boto3

        boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="sftrl-test")
        storage._BACKENDS.pop("s3", None)
        exp = experiment_of(experiment_cr("demo", tiny_spec("s3://sftrl-test/root")))
        plan = build_plan(exp)
        ids = list(plan.stages)
        storage.write_json(f"s3://sftrl-test/root/stages/{ids[0]}/_SUCCESS", {"files": {}})
        storage.write_json(f"s3://sftrl-test/root/stages/{ids[1]}/checkpoints/checkpoint-1/_SUCCESS", {"files": {}})
        view = k8s.ClusterView(api=None, namespace="default")  # type: ignore[arg-type]
        assert view.completed(plan) == {ids[0]}  # a checkpoint's _SUCCESS is not the stage's
        big = k8s.ClusterView(api=None, namespace="default")  # type: ignore[arg-type]
        assert big._list_complete(plan.root, [f"eval-{i:012x}" for i in range(40)] + ids) == {ids[0]}
    finally:
        storage._BACKENDS.pop("s3", None)
        server.stop()
