"""`sftrl status` on a cluster (the FAKE API server of tests/fakes) shows a failed stage as failed."""

from __future__ import annotations

from controller import cli
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
