"""`sftrl status` on a cluster (the FAKE API server of tests/fakes) shows a failed stage as failed."""

from __future__ import annotations

from controller import cli
from controller.kubernetes import render
from controller.kubernetes.operator import ClusterDefaults, experiment_of
from controller.plan import build_plan
from tests.fakes.fake_kube_apiserver import EXPERIMENTS, FakeKubeApiServer
from tests.fakes.kube import connect, experiment_cr, tiny_spec


def test_status_reads_failed_for_a_failed_stage(tmp_path, capsys):
    srv = FakeKubeApiServer().start(simulate=False)
    try:
        obj = experiment_cr("demo", tiny_spec(f"file://{tmp_path}/store", methods=["sft"]))
        plan = build_plan(experiment_of(obj, ClusterDefaults.from_env()))
        sft = next(sid for sid, st in plan.stages.items() if st.kind == "sft")
        srv.put_object(EXPERIMENTS, obj)
        kc = srv.write_kubeconfig(tmp_path / "kubeconfig")
        status = {"phase": "Failed", "stages": {sid: ("failed" if sid == sft else "pending") for sid in plan.stages}}
        connect(srv, tmp_path).patch_experiment_status("default", "demo", {"status": status})  # as the operator does
        assert cli.main(["status", "demo", "--kubeconfig", str(kc)]) == 0
    finally:
        srv.stop()
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith(sft))
    assert line.split()[3] == "failed" and "phase Failed" in out, out


def test_status_shows_the_failed_stages_error_line_and_where_its_log_is(tmp_path, capsys):
    """The operator keeps the error line the stage wrote to _FAILED in its attempt record; status prints it."""
    import time

    from controller.kubernetes.operator import Operator

    srv = FakeKubeApiServer(job_seconds=0.05, start_delay=0.02).start()
    try:
        spec = tiny_spec(f"file://{tmp_path}/store", methods=["sft"])
        spec["execution"]["max_attempts"] = 1
        obj = experiment_cr("demo", spec)
        plan = build_plan(experiment_of(obj, ClusterDefaults.from_env()))
        sft = next(sid for sid, st in plan.stages.items() if st.kind == "sft")
        srv.stage_exit_codes[sft] = 1
        srv.stage_errors[sft] = "ValueError: row 3 of s3://b/sft.jsonl has no answer"
        srv.put_object(EXPERIMENTS, obj)
        op = Operator(connect(srv, tmp_path), "default", defaults=ClusterDefaults())
        for _ in range(300):
            op.cycle()
            if ((srv.get(EXPERIMENTS, "default", "demo") or {}).get("status") or {}).get("stages", {}).get(sft) == "failed":
                break
            time.sleep(0.03)
        rec = srv.get(EXPERIMENTS, "default", "demo")["status"]["attempts"][sft]
        assert rec["message"] == srv.stage_errors[sft], rec
        capsys.readouterr()
        assert cli.main(["status", "demo", "--kubeconfig", str(srv.write_kubeconfig(tmp_path / "kc"))]) == 0
    finally:
        srv.stop()
    out = capsys.readouterr().out
    lines = out.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith(sft))
    assert lines[i].split()[3] == "failed", out
    assert lines[i + 1].split("^ ", 1)[1] == (
        f"failed: ValueError: row 3 of s3://b/sft.jsonl has no answer (exit 1; log: `sftrl logs demo {sft} -n default` "
        f"(PyTorchJob {render.stage_job_name(plan.stages[sft], 1)}, kept until its TTL))"), out


def test_status_reads_the_error_line_from_storage_when_the_record_has_none(tmp_path, capsys):
    """An attempt record without a message (an older operator): the stage's _FAILED record in storage says why."""
    from job_runtime.io import storage

    srv = FakeKubeApiServer().start(simulate=False)
    try:
        obj = experiment_cr("demo", tiny_spec(f"file://{tmp_path}/store", methods=["sft"]))
        plan = build_plan(experiment_of(obj, ClusterDefaults.from_env()))
        sft = next(sid for sid, st in plan.stages.items() if st.kind == "sft")
        storage.write_failure(plan.stages[sft].config.output, error="CUDA out of memory", exit_code=137)
        srv.put_object(EXPERIMENTS, obj)
        status = {"phase": "Failed", "stages": {sid: ("failed" if sid == sft else "pending") for sid in plan.stages},
                  "attempts": {sft: {"attempt": 2, "state": "failed", "retryable": False, "reason": "PyTorchJobFailed"}}}
        connect(srv, tmp_path).patch_experiment_status("default", "demo", {"status": status})
        assert cli.main(["status", "demo", "--kubeconfig", str(srv.write_kubeconfig(tmp_path / "kc"))]) == 0
    finally:
        srv.stop()
    out = capsys.readouterr().out
    assert "^ failed: CUDA out of memory (exit 137; log: `sftrl logs demo" in out, out
