"""Kubernetes at scale: the paper's matrix grown to ~10,000 stages.

Prints (1) how long planning and rendering every stage's PyTorchJob takes, and (2) how many API
calls one operator reconcile cycle makes, measured against the FAKE Kubernetes API server
(tests/fakes/fake_kube_apiserver.py), for ~100, ~1,000 and ~10,000 stages. The matrix is
examples/paper.yaml with more seeds; the jobs stay running (no simulated training operator), so:

- cycle 1 (fresh experiment): lists + up to ``--max-actions`` creates + Events + one status patch;
- cycle 3 (steady state: max_parallel jobs running, nothing changed): only the two lists.

It also prints how many storage requests each cycle makes, on a real S3 API (moto's server on
127.0.0.1): cycle 1 lists ``stages/`` once and, per launch, asks whether the stage is done (one
HEAD, controller/kubernetes/completion.py) and writes its stage.json; a steady cycle makes none,
because a stage's ``_SUCCESS`` manifest is size-checked once, when its job succeeds. The
Experiment carries the input fingerprints `sftrl submit` records (annotation ``sftrl.io/inputs``;
placeholder values: the hub and the paper's bucket are not reachable here).

Neither grows with the number of stages. Targets: plan + render of 10,000 stages in seconds.

    python bench/k8s_scale.py [--sizes 1,8,79] [--max-actions 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.kubernetes import render  # noqa: E402
from controller.plan import build_plan  # noqa: E402
from controller.spec import validate_dict  # noqa: E402


def paper_grown(seeds: int) -> dict:
    raw = yaml.safe_load((ROOT / "examples" / "paper.yaml").read_text())
    raw["spec"]["seeds"] = list(range(seeds))
    return raw


def plan_and_render(raw: dict) -> tuple[int, float, float]:
    t0 = time.perf_counter()
    exp = validate_dict(raw)
    plan = build_plan(exp)
    t1 = time.perf_counter()
    jobs = render.render_plan(plan, exp)
    t2 = time.perf_counter()
    assert len(jobs) == len(plan.stages)
    return len(plan.stages), t1 - t0, t2 - t1


def _moto() -> tuple[object, str]:
    """A moto S3 server on loopback and a bucket in it, with storage's s3:// backend pointed at it."""
    import logging
    import os

    import boto3
    from moto.server import ThreadedMotoServer

    from job_runtime.io import storage

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update({"AWS_ENDPOINT_URL_S3": f"http://{host}:{port}", "AWS_ENDPOINT_URL": f"http://{host}:{port}",
                       "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"})
    boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="bench")
    storage.reset_backends()
    return server, "s3://bench/store"


def api_calls(raw: dict, max_actions: int) -> tuple[Counter, Counter, Counter, Counter]:
    """(API calls of cycle 1, of cycle 3, storage requests of cycle 1, of cycle 3)."""
    from controller import fingerprint
    from controller.kubernetes import executor as k8s
    from controller.kubernetes import inputs
    from controller.kubernetes.operator import ClusterDefaults, Operator
    from job_runtime.io import storage
    from tests.fakes.fake_kube_apiserver import EXPERIMENTS, FakeKubeApiServer

    server, root = _moto()
    with tempfile.TemporaryDirectory() as tmp:
        spec = dict(raw["spec"], storage=root)  # stage.json is written before each create
        recorded = {uri: f"bench:{uri}" for uri in fingerprint.needing(validate_dict(raw))}
        fake = FakeKubeApiServer().start(simulate=False)
        requests: Counter = Counter()
        storage.backend(root).client.meta.events.register(  # type: ignore[attr-defined]
            "before-send.s3", lambda request, **_: requests.update([request.method]))
        try:
            fake.put_object(EXPERIMENTS, {"apiVersion": "sftrl.io/v1alpha1", "kind": "Experiment",
                                          "metadata": {"name": raw["metadata"]["name"], "namespace": "ml",
                                                       "annotations": {inputs.ANNOTATION: inputs.encode(recorded)}},
                                          "spec": spec})
            client, _ = k8s.connect(str(fake.write_kubeconfig(Path(tmp) / "kubeconfig")))
            op = Operator(k8s.KubeApi(client), "ml", defaults=ClusterDefaults(), max_actions=max_actions)
            counts, stored = [], []
            for _ in range(3):  # cycle 2 launches what max_actions left over (up to max_parallel)
                n = len(fake.calls())
                requests.clear()
                op.cycle()
                counts.append(Counter(f"{r.verb} {r.resource}" for r in fake.calls()[n:]))
                stored.append(Counter(requests))
            return counts[0], counts[2], stored[0], stored[2]
        finally:
            fake.stop()
            server.stop()
            storage.reset_backends()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,8,79", help="seeds of the paper matrix (1 -> 132 stages, 79 -> 10,116)")
    ap.add_argument("--max-actions", type=int, default=50, help="creates per experiment per cycle")
    args = ap.parse_args()
    rows = []
    for seeds in [int(s) for s in args.sizes.split(",")]:
        raw = paper_grown(seeds)
        n, t_plan, t_render = plan_and_render(raw)
        first, steady, s_first, s_steady = api_calls(raw, args.max_actions)
        rows.append((n, t_plan, t_render, first, steady, s_first, s_steady))
        print(f"{n:>6} stages: plan {t_plan:6.2f}s  render {t_render:6.2f}s  (plan+render {t_plan + t_render:.2f}s)  "
              f"API calls: first cycle {sum(first.values())}, steady cycle {sum(steady.values())}  "
              f"storage requests: first cycle {sum(s_first.values())}, steady cycle {sum(s_steady.values())}", flush=True)
    print("\nAPI calls per cycle, by request (measured against the fake API server):")
    for n, _, _, first, steady, _, _ in rows:
        print(f"  {n:>6} stages  first: {dict(sorted(first.items()))}")
        print(f"  {'':>6}         steady: {dict(sorted(steady.items()))}")
    print("\nS3 requests per cycle, by HTTP method (moto server on 127.0.0.1):")
    for n, _, _, _, _, s_first, s_steady in rows:
        print(f"  {n:>6} stages  first: {dict(sorted(s_first.items()))}  steady: {dict(sorted(s_steady.items()))}")
    firsts = {sum(r[3].values()) for r in rows}
    steadies = {sum(r[4].values()) for r in rows}
    s_firsts = {sum(r[5].values()) for r in rows}
    s_steadies = {sum(r[6].values()) for r in rows}
    print(f"\nconstant in the number of stages: first cycle {sorted(firsts)}, steady cycle {sorted(steadies)} API calls; "
          f"first cycle {sorted(s_firsts)}, steady cycle {sorted(s_steadies)} storage requests")
    n, t_plan, t_render = rows[-1][0], rows[-1][1], rows[-1][2]
    print(f"plan + render of {n:,} stages: {t_plan + t_render:.2f} s")
    return 0 if len(steadies) == 1 and len(firsts) == 1 and len(s_steadies) == 1 and len(s_firsts) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
