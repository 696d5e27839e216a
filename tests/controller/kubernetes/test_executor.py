"""The Kubernetes executor against the FAKE API server (tests/fakes/fake_kube_apiserver.py):
idempotent creates, one list per observe, condition mapping, durable attempt records, exit codes
per job uid and per refresh, job names per storage root, transient vs permanent errors."""

from __future__ import annotations

import time

import pytest

from controller.kubernetes import render
from controller.kubernetes import executor as k8s
from controller.kubernetes.attempts import Attempt
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


def _name(plan, sid, attempt=1):
    return render.stage_job_name(plan.stages[sid], attempt)


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
    o, rec = k8s.observe_stage({1: _job(*conds)}, done=False)
    assert o.state is expected and o.attempts == 1
    assert rec.state == ("running" if expected is State.RUNNING else "failed") and rec.attempt == 1


def test_success_manifest_decides_completion_whatever_the_job_says():
    assert k8s.observe_stage({}, done=True)[0].state is State.SUCCEEDED
    assert k8s.observe_stage({2: _job(("Running", "True"))}, done=True) == (Observed(State.SUCCEEDED, 2), None)
    assert k8s.observe_stage({}, done=False) == (Observed(State.PENDING, 0), None)
    # done needs no record: storage is its durable outcome
    assert k8s.observe_stage({}, done=True, record=Attempt(2, "failed"))[1] is None


@pytest.mark.parametrize("reason,code,retryable", [
    ("PyTorchJobFailed", 1, False), ("PyTorchJobFailed", 2, False), ("PyTorchJobFailed", 127, False),
    ("PyTorchJobFailed", 137, True), ("PyTorchJobFailed", 200, True), ("PyTorchJobFailed", None, True),
    ("BackoffLimitExceeded", None, True), ("DeadlineExceeded", None, False),
])
def test_failed_exit_codes_decide_retryability(reason, code, retryable):
    o, rec = k8s.observe_stage({1: _job(("Failed", "True"), reason=reason)}, done=False, exit_code=lambda j: code)
    assert o.state is State.FAILED and o.retryable is retryable
    assert o.finished_at == 1735689600.0
    assert rec == Attempt(1, "failed", retryable, code, reason, 1735689600.0)


def test_latest_attempt_decides():
    jobs = {1: _job(("Failed", "True")), 2: _job(("Running", "True"))}
    assert k8s.observe_stage(jobs, done=False, exit_code=lambda j: 1)[0] == Observed(State.RUNNING, 2)


def test_a_gone_job_is_judged_by_its_record_never_as_pending():
    code_failure = Attempt(1, "failed", False, 1, "PyTorchJobFailed", 100.0)
    assert k8s.observe_stage({}, False, record=code_failure) == (Observed(State.FAILED, 1, 100.0, False), code_failure)
    # launched, then its job vanished before any outcome was seen: lost, a retryable failure
    o, rec = k8s.observe_stage({}, False, record=Attempt(2, "running"), now=500.0)
    assert o == Observed(State.FAILED, 2, 500.0, True) and rec == Attempt(2, "lost", True, None, "JobGone", 500.0)
    # a recorded outcome of the job still there is not asked of the pods again
    asked = []
    job = _job(("Failed", "True"))
    assert k8s.observe_stage({1: job}, False, lambda j: asked.append(j) or 0, code_failure)[0].retryable is False
    assert asked == []
    # a newer job than the record (the record of its launch was not written): the job decides
    assert k8s.observe_stage({2: _job(("Running", "True"))}, False, record=code_failure)[0] == Observed(State.RUNNING, 2)


def test_a_failed_job_whose_exit_code_is_not_visible_yet_is_not_judged_yet():
    job = _job(("Failed", "True"))
    ended = 1735689600.0
    o, rec = k8s.observe_stage({1: job}, False, lambda j: None, now=ended + 5)
    assert o == Observed(State.RUNNING, 1) and rec.state == "running"  # wait for the pod
    o, rec = k8s.observe_stage({1: job}, False, lambda j: None, now=ended + 600)
    assert o.state is State.FAILED and o.retryable and rec.exit_code is None  # unknown cause: retryable
    terminating = {**job, "metadata": {**job["metadata"], "deletionTimestamp": "2025-01-01T00:00:09Z"}}
    assert k8s.observe_stage({1: terminating}, False, lambda j: 1)[0] == Observed(State.RUNNING, 1)


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
    assert fake.creates == {_name(plan, sid): 1} and fake.conflicts == {_name(plan, sid): 1}
    assert again.adopted == [_name(plan, sid)] and again.launched == [(sid, 1)]  # the existing job is the attempt
    assert fake.config_missing_at_create == []
    job = fake.get(JOBS, "default", _name(plan, sid))
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
    assert ex.observe(plan)[sid] == Observed(State.SUCCEEDED, 0) and sid not in ex.attempts


def test_failed_jobs_code_vs_infrastructure(fake, tmp_path):
    api, exp, plan = _setup(fake, tmp_path)
    code_fail, infra_fail = list(plan.stages)[:2]
    fake.exit_codes = {_name(plan, code_fail): 1, _name(plan, infra_fail): 200}
    ex = k8s.K8sExecutor(api, exp, "default")
    ex.apply(plan, [Launch(code_fail, 1), Launch(infra_fail, 1)])
    assert _wait(lambda: all(o.state is State.FAILED for s, o in ex.observe(plan).items()
                             if s in (code_fail, infra_fail)))
    obs = ex.observe(plan)
    assert obs[code_fail].retryable is False  # exit 1: the operator's pods list gave the code
    assert obs[infra_fail].retryable is True  # exit 200: restarted to backoffLimit, then failed
    job = fake.get(JOBS, "default", _name(plan, infra_fail))
    assert [c["reason"] for c in job["status"]["conditions"] if c["type"] == "Failed"] == ["BackoffLimitExceeded"]
    # the retry is a new job with its own name; the failed one is kept for its logs
    ex.apply(plan, [Launch(infra_fail, 2)])
    assert fake.creates[_name(plan, infra_fail, 2)] == 1
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
    fake.reject_creates[_name(plan, sid)] = (403, 'exceeded quota: gpu-quota, requested: nvidia.com/gpu=8')
    events = []
    ex = k8s.K8sExecutor(api, exp, "default", events=lambda *e: events.append(e))
    ex.apply(plan, [Launch(sid, 1)])
    assert "exceeded quota" in ex.rejected[sid] and "403" in ex.rejected[sid]
    assert events and events[0][:2] == ("Warning", "LaunchRejected")
    creates = [r for r in fake.calls() if r.verb == "create"]
    ex.apply(plan, [Launch(sid, 1)])  # cooling down: no second request
    assert [r for r in fake.calls() if r.verb == "create"] == creates and len(creates) == 1


def test_delete_stops_running_jobs_only(fake, tmp_path):
    fake.job_seconds = 60  # still running when deleted, however busy the machine
    api, exp, plan = _setup(fake, tmp_path)
    a, b = list(plan.stages)[:2]
    ex = k8s.K8sExecutor(api, exp, "default")
    ex.apply(plan, [Launch(a, 1), Launch(b, 1)])
    ex.observe(plan)
    ex.apply(plan, [Delete(a)])
    assert fake.get(JOBS, "default", _name(plan, a)) is None
    assert fake.get(JOBS, "default", _name(plan, b)) is not None
    assert ex.observe(plan)[a].state is State.PENDING


def test_unreachable_api_and_missing_kubeconfig_say_what_to_do(tmp_path):
    fake = FakeKubeApiServer().start()
    api, exp, plan = _setup(fake, tmp_path, retries=2)
    fake.stop()
    with pytest.raises(k8s.ApiUnavailable, match="cannot reach a Kubernetes API, because list pytorchjobs failed 3 times"):
        k8s.K8sExecutor(api, exp, "default").observe(plan)
    with pytest.raises(k8s.ApiUnavailable, match=r"cannot reach a Kubernetes API, because .*Set KUBECONFIG"):
        k8s.connect(str(tmp_path / "no-such-kubeconfig"))


def test_a_truncated_artifact_is_not_done_and_the_reason_names_the_file(fake, tmp_path):
    """As storage.is_complete: a _SUCCESS whose file lost bytes does not make the stage done; the
    verdict is kept for that manifest, and a new manifest (a new attempt's) is judged again."""
    api, exp, plan = _setup(fake, tmp_path)
    sid = next(iter(plan.stages))
    out = storage.local_path(plan.stages[sid].config.output)
    out.mkdir(parents=True)
    (out / "model.bin").write_bytes(b"ab")  # truncated: the manifest says 4
    storage.write_json(storage.join(plan.stages[sid].config.output, "_SUCCESS"), {"files": {"model.bin": {"size": 4}}})
    ex = k8s.K8sExecutor(api, exp, "default")
    assert ex.observe(plan)[sid].state == State.PENDING
    assert ex.incomplete == {sid: "model.bin is 2 bytes, but its _SUCCESS manifest says 4"}
    ex.apply(plan, [Launch(sid, 1)])  # asked again just before the launch: still not done, so it runs
    assert ex.launched == [(sid, 1)] and ex.found_done == []
    (out / "model.bin").write_bytes(b"abcd")  # the new attempt writes its files, then its manifest
    storage.write_json(storage.join(plan.stages[sid].config.output, "_SUCCESS"),
                       {"files": {"model.bin": {"size": 4}}, "created": time.time()})
    assert ex.observe(plan)[sid].state == State.SUCCEEDED and ex.incomplete == {}


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
        storage.write_json(f"s3://sftrl-test/root/stages/{ids[2]}/_SUCCESS", {"files": {"model.bin": {"size": 4}}})
        view = k8s.ClusterView(api=None, namespace="default")  # type: ignore[arg-type]
        assert view.completed(plan) == {ids[0]}  # a checkpoint's _SUCCESS is not the stage's; ids[2] lacks its file
        assert view.incomplete(plan) == {ids[2]: "model.bin is missing, but its _SUCCESS manifest lists it"}
    finally:
        storage._BACKENDS.pop("s3", None)
        server.stop()


# --- exit codes, storage roots, owners ------------------------------------------------------------------


def test_exit_codes_belong_to_one_job_and_one_refresh(fake, tmp_path):
    """A recreated job of the same name never inherits the old pod's code; the cache lives one refresh."""
    api, exp, plan = _setup(fake, tmp_path)
    sid = next(iter(plan.stages))
    name = _name(plan, sid)
    fake.exit_codes[name] = 3
    ex = k8s.K8sExecutor(api, exp, "default")
    ex.apply(plan, [Launch(sid, 1)])
    assert _wait(lambda: ex.observe(plan)[sid].state is State.FAILED)
    assert ex.attempts[sid].exit_code == 3
    fake.delete(JOBS, ("default", name), "deleted")  # by hand; a new job of that name fails otherwise
    fake.exit_codes[name] = 4
    ex.apply(plan, [Launch(sid, 1)])
    view = k8s.ClusterView(api, "default")

    def failed_again():
        view.refresh()
        job = view.jobs("default", render.storage_key(plan.root), sid).get(1)
        return job is not None and k8s.job_phase(job)[0] == "failed" and view.exit_code(job) is not None

    assert _wait(failed_again)
    assert view.exit_code(view.jobs("default", render.storage_key(plan.root), sid)[1]) == 4
    fake.store[JOBS].clear()
    view.refresh()
    assert view._exit == {} and view.by_stage == {}  # nothing outlives its refresh


def test_an_exit_code_seen_late_still_decides(fake, tmp_path):
    """The pod shows its exit code 1 a second after the job failed: never judged retryable meanwhile."""
    fake.pod_report_delay = 1.0
    api, exp, plan = _setup(fake, tmp_path)
    sid = next(iter(plan.stages))
    fake.exit_codes[_name(plan, sid)] = 1
    ex = k8s.K8sExecutor(api, exp, "default")
    ex.apply(plan, [Launch(sid, 1)])
    seen = []

    def failed():
        seen.append(ex.observe(plan)[sid])
        return seen[-1].state is State.FAILED

    assert _wait(failed)
    assert seen[-1].retryable is False  # exit 1: a code failure, whenever its code became visible
    assert all(o.state is State.RUNNING for o in seen[:-1]) and ex.attempts[sid].exit_code == 1


def test_two_storage_roots_sharing_a_stage_id_get_a_job_each(fake, tmp_path):
    api = connect(fake, tmp_path)
    exps = [experiment_of(experiment_cr(n, tiny_spec(f"file://{tmp_path}/{n}"))) for n in ("a", "b")]
    plans = [build_plan(e) for e in exps]
    sid = next(iter(plans[0].stages))
    assert sid in plans[1].stages  # same content, same id: the root is not part of it
    from controller.reconcile import reconcile

    exs = [k8s.K8sExecutor(api, e, "default") for e in exps]
    dag = {sid: ()}

    def step():
        done = True
        for ex, plan in zip(exs, plans):
            o = {sid: ex.observe(plan)[sid]}
            ex.apply(plan, reconcile(dag, o, time.time()))
            done &= o[sid].state is State.SUCCEEDED
        return done

    assert _wait(step)
    assert not [n for n in fake.creates if n.endswith("-2")] and not fake.conflicts  # no retry burnt, no job shared
    assert sorted(fake.creates) == sorted(render.stage_job_name(p.stages[sid]) for p in plans)
    assert set(fake.creates.values()) == {1}
    assert all(storage.is_complete(p.stages[sid].config.output) for p in plans)


def test_jobs_are_owned_by_the_experiments_that_need_them(fake, tmp_path):
    api, exp, plan = _setup(fake, tmp_path)
    sid = next(iter(plan.stages))
    from tests.fakes.fake_kube_apiserver import EXPERIMENTS

    owners = [fake.put_object(EXPERIMENTS, experiment_cr(n, tiny_spec(f"file://{tmp_path}/store"))) for n in ("demo", "other")]
    ex = k8s.K8sExecutor(api, exp, "default", owners=lambda s: owners)
    ex.apply(plan, [Launch(sid, 1)])
    refs = fake.get(JOBS, "default", _name(plan, sid))["metadata"]["ownerReferences"]
    assert [(r["kind"], r["name"], r["uid"]) for r in refs] == [("Experiment", o["metadata"]["name"], o["metadata"]["uid"])
                                                                for o in owners]
