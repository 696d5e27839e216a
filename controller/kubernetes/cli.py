"""`sftrl render | submit | status | logs | cancel | operator`: the Kubernetes commands.

``register(subparsers)`` adds them to the lead's ``sftrl`` parser. ``render`` needs no cluster and
no kubernetes package; the others import controller.kubernetes.executor / controller.kubernetes.operator lazily and
fail with one clear line (exit 2) when no cluster can be reached.

Stage ids agree everywhere: ``render`` and ``submit`` fingerprint the inputs here, as ``sftrl
plan`` does (controller/fingerprint.py); ``submit`` runs every preflight check first (exit 2, nothing
created) and records the fingerprints on the Experiment (annotation ``sftrl.io/inputs``), and the
operator, ``status`` and ``logs`` plan with the recorded ones (controller/kubernetes/inputs.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from job_runtime.io import storage
from controller import fingerprint
from controller import spec as spec_mod
from controller import status as status_mod
from controller.kubernetes import inputs, render
from controller.plan import Plan, build_plan

EXIT_USAGE = 2
CR_API_VERSION = "sftrl.io/v1alpha1"
CRD_HINT = ("Install it with `kubectl apply -f manifests/crds/sftrl.io_experiments.yaml` "
            "(or `helm install sftrl charts/sftrl`)")


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _load(path: str) -> tuple[spec_mod.Experiment, dict[str, Any]]:
    exp = spec_mod.load(path)  # SpecError is reported by the caller
    return exp, yaml.safe_load(Path(path).read_text(encoding="utf-8"))


# --- render -----------------------------------------------------------------------------------------


def _notes(notes: list[str]) -> None:
    for n in notes:
        print(f"note: {n}", file=sys.stderr)


def cmd_render(args: argparse.Namespace) -> int:
    try:
        exp, _ = _load(args.file)
    except spec_mod.SpecError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)  # an unusable -o is said before any input is read
    if args.no_fingerprints:
        values: dict[str, str] = {}
        print("note: stage ids are provisional (--no-fingerprints): they hash the inputs' URIs, not their content, "
              "so they differ from `sftrl plan` and `sftrl submit` for inputs that are not builtin://", file=sys.stderr)
    else:
        fp = fingerprint.collect(exp)
        _notes(fp.notes)
        if fp.problems:
            print(spec_mod.SpecError(args.file, fp.problems + [
                "(stage ids hash the inputs' content; to render without reading them, pass --no-fingerprints: "
                "the ids are then provisional)"]).render(), file=sys.stderr)
            return EXIT_USAGE
        values = fp.values
    try:
        plan = build_plan(exp, values)
        jobs = render.render_plan(plan, exp, namespace=args.namespace)
    except render.RenderError as e:
        return _err(str(e))
    for job, cfg in jobs:
        bad = render.webhook_errors(job)
        if bad:  # a bug, not user error: say exactly what
            return _err(f"rendered {job['metadata']['name']} breaks the training operator's rules: {'; '.join(bad)}")
        name = job["metadata"]["name"]
        (out / f"{name}.yaml").write_text(yaml.safe_dump(job, sort_keys=True), encoding="utf-8")
        (out / f"{name}.stage.json").write_text(
            json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    multi = sum(1 for j, _ in jobs if "Worker" in j["spec"]["pytorchReplicaSpecs"])
    print(f"{len(jobs)} PyTorchJobs ({multi} multi-node) and their stage.json written to {out}/")
    print(f"apply one by hand: write its stage.json to {plan.root}/stages/<id>/stage.json, then "
          f"`kubectl apply -f {out}/<job>.yaml` (or let `sftrl submit` do both for every stage)")
    return 0


# --- cluster commands -----------------------------------------------------------------------------


def _connect(args: argparse.Namespace, agent: str = "sftrl-cli/0.1.0") -> tuple[Any, str]:
    """(KubeApi, namespace) or SystemExit(2) with the reason."""
    try:
        from controller.kubernetes import executor as k8s
    except ImportError as e:
        raise SystemExit(_err(f"the Kubernetes commands need the kubernetes packages, because {e}. "
                              "Run `pip install 'sftrl[kubernetes]'`"))
    try:
        client, ns = k8s.connect(getattr(args, "kubeconfig", None), getattr(args, "context", None),
                                 user_agent=agent)
    except k8s.ApiUnavailable as e:
        raise SystemExit(_err(str(e)))
    return k8s.KubeApi(client, retries=2), (args.namespace or ns)


def _guard(fn):
    """Turn API failures into one clear line and exit code 2."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            from controller.kubernetes import executor as k8s
        except ImportError as e:
            return _err(f"the Kubernetes commands need the kubernetes packages, because {e}. "
                        "Run `pip install 'sftrl[kubernetes]'`")
        try:
            return fn(args)
        except k8s.ApiUnavailable as e:
            return _err(str(e))
        except k8s.ApiRejected as e:
            if k8s.crd_missing(e):
                return _err(f"the cluster has no Experiment resource type, because the sftrl CRD is not installed. "
                            f"{CRD_HINT}")
            return _err(f"{e}. Check your permissions (`kubectl auth can-i`) and the object")

    wrapper.__name__ = fn.__name__
    return wrapper


def _experiment_body(exp: spec_mod.Experiment, raw: dict[str, Any], namespace: str,
                     fingerprints: dict[str, str]) -> dict[str, Any]:
    spec = dict(raw.get("spec") or {})
    spec["kubernetes"] = {**(spec.get("kubernetes") or {}), "namespace": namespace}
    return {"apiVersion": CR_API_VERSION, "kind": "Experiment",
            "metadata": {"name": exp.metadata.name, "namespace": namespace,
                         "labels": {render.L_PART_OF: "sftrl", render.L_MANAGED_BY: "sftrl-cli"},
                         "annotations": {inputs.ANNOTATION: inputs.encode(fingerprints)}},
            "spec": spec}


def _is_local_path(uri: Any) -> bool:
    return uri is not None and ("://" not in str(uri) or str(uri).startswith("file://"))


def _cluster_storage(raw: dict[str, Any], override: str | None, watch: bool) -> dict[str, Any]:
    """The spec's storage as the cluster should see it.

    A local path (the quickstart's ./runs) is on this machine only: unless --watch runs the loop
    here, it is dropped so the operator's default (Helm `storage.uri`) applies.
    """
    spec = dict(raw.get("spec") or {})
    if override:
        spec["storage"] = override
    elif not watch and _is_local_path(spec.get("storage")):
        print(f"note: spec.storage {spec.pop('storage')} is a local path that pods cannot reach; the cluster's "
              "default storage (Helm value storage.uri) is used. Pass --storage s3://... to choose another.")
    return {**raw, "spec": spec}


def _local_inputs(exp: spec_mod.Experiment) -> list[str]:
    """Inputs that are files on this machine: pods in the cluster cannot read them."""
    return [f"{inp.where}: {inp.uri} is a path on this machine, because pods in the cluster cannot read local files. "
            "Upload it (s3://...) or publish it on the Hugging Face hub, and use that URI"
            for inp in fingerprint.inputs_of(exp) if inp.kind == "local"]


def _preflight(exp: spec_mod.Experiment, raw: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, str], list[str]]:
    """(fingerprints of the inputs, problems): every check of `sftrl validate`, with this machine's
    credentials, before anything is created in the cluster; and no input may be a local file."""
    from controller import preflight

    storage_known = "storage" in (raw.get("spec") or {})  # else the cluster's default: not ours to check
    if args.storage:
        exp.spec.storage = args.storage
    pre = preflight.check(exp, check_storage=storage_known or bool(args.storage))
    _notes(pre.notes)
    return pre.fingerprints, _local_inputs(exp) + pre.problems


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        exp, raw = _load(args.file)
        plan = build_plan(exp)
        if plan.stages:
            render.render_job(next(iter(plan.stages.values())), exp)
    except spec_mod.SpecError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_USAGE
    except render.RenderError as e:
        return _err(str(e))
    if not args.namespace and (raw.get("spec") or {}).get("kubernetes", {}).get("namespace"):
        args.namespace = raw["spec"]["kubernetes"]["namespace"]
    raw = _cluster_storage(raw, args.storage, args.watch)
    fingerprints, problems = _preflight(exp, raw, args)
    if problems:  # every user error before a GPU is spent: nothing is created
        print(spec_mod.SpecError(args.file, problems).render(), file=sys.stderr)
        return EXIT_USAGE
    n_stages = len(build_plan(exp, fingerprints).stages)
    return _guard(lambda a: _submit(a, exp, raw, n_stages, fingerprints))(args)


def _submit(args: argparse.Namespace, exp: spec_mod.Experiment, raw: dict[str, Any], n_stages: int,
            fingerprints: dict[str, str]) -> int:
    from controller.kubernetes.executor import ApiRejected

    api, ns = _connect(args)
    body = _experiment_body(exp, raw, ns, fingerprints)
    name = exp.metadata.name
    if api.create_experiment(ns, body) is not None:
        print(f"experiment {name} created in namespace {ns}: {n_stages} stages")
    else:
        for _ in range(5):  # replace the spec (and drop a cancel) on the latest version
            cur = api.get_experiment(ns, name) or {}
            meta = dict(cur.get("metadata") or {})
            annotations = {**{k: v for k, v in (meta.get("annotations") or {}).items() if k != "sftrl.io/cancel"},
                           **body["metadata"]["annotations"]}  # this submission's input fingerprints
            if cur.get("spec") == body["spec"] and annotations == (meta.get("annotations") or {}):
                print(f"experiment {name} in namespace {ns} is unchanged: {n_stages} stages")
                break
            new = {**body, "metadata": {**meta, "labels": {**(meta.get("labels") or {}), **body["metadata"]["labels"]},
                                        "annotations": annotations}}
            try:
                api.replace_experiment(ns, name, new)
                print(f"experiment {name} updated in namespace {ns}: {n_stages} stages; finished stages are kept")
                break
            except ApiRejected as e:  # 409: someone else wrote it in between; read again
                if e.status != 409:
                    raise
    if not args.watch:
        print(f"follow it with `sftrl status {name} -n {ns}` (the operator in the cluster runs it)")
        return 0
    return _watch(api, ns, name, args.interval)


def _watch(api: Any, ns: str, name: str, interval: float) -> int:
    from controller.kubernetes.operator import ClusterDefaults, Operator

    start = time.time()
    last: list[Any] = [None]

    def progress(exp_name: str, status: dict[str, Any]) -> None:
        c = status.get("counts") or {}
        line = (status.get("phase"), c.get("succeeded"), c.get("running"), c.get("failed"))
        if line != last[0]:
            last[0] = line
            print(f"[{time.time() - start:6.0f}s] {status.get('phase', '?'):<9} {c.get('succeeded', 0)}/"
                  f"{c.get('total', 0)} succeeded, {c.get('running', 0)} running, {c.get('failed', 0)} failed",
                  flush=True)

    op = Operator(api, ns, interval=interval, only=name, defaults=ClusterDefaults.from_env(), on_status=progress)
    stop = threading.Event()
    old = signal.signal(signal.SIGINT, lambda *a: stop.set())
    try:
        final = op.run(stop, until_done=True)
    finally:
        signal.signal(signal.SIGINT, old)
    if final is None:
        print("stopped watching; the experiment goes on in the cluster (if its operator runs)")
        return 130
    print(f"experiment {name}: {final}")
    return 0 if final == "Succeeded" else 1


def _recorded_plan(obj: dict[str, Any]) -> tuple[Plan, list[str]]:
    """The Experiment's plan with the input fingerprints recorded on it (as the operator plans it),
    and the inputs that have none recorded yet (their stages' ids are provisional until the
    operator fingerprints them). Raises SpecError."""
    from controller.kubernetes.operator import ClusterDefaults, experiment_of

    exp = experiment_of(obj, ClusterDefaults.from_env())
    values = inputs.recorded(obj)
    return build_plan(exp, values), fingerprint.needing(exp, values)


def _failure_line(obj: dict[str, Any], plan: Plan, sid: str, ns: str) -> str:
    """'failed: <error line> (exit N; log: ...)' for a failed stage, as `sftrl plan` says it locally:
    the error line from the attempt record, else from the stage's _FAILED record in storage."""
    from controller.kubernetes.attempts import Attempt, explain

    rec = Attempt.from_status(((obj.get("status") or {}).get("attempts") or {}).get(sid)) or Attempt(0, "failed")
    error, code = rec.message, rec.exit_code
    if not error:
        try:
            failure = storage.read_failure(plan.stages[sid].config.output) or {}
        except (storage.StorageError, OSError):
            failure = {}
        error = str(failure.get("error") or "") or explain(rec)
        code = code if code is not None else failure.get("exit_code") if isinstance(failure.get("exit_code"), int) else None
    name = obj["metadata"]["name"]
    job = f"PyTorchJob {render.stage_job_name(plan.stages[sid], rec.attempt)}, " if rec.attempt else ""
    where = f"`sftrl logs {name} {sid} -n {ns}` ({job}kept until its TTL)"
    return status_mod.StageStatus(status_mod.FAILED, error, where, code).describe()


@_guard
def cmd_status(args: argparse.Namespace) -> int:
    api, ns = _connect(args)
    obj = api.get_experiment(ns, args.name)
    if obj is None:
        return _err(f"experiment {args.name} was not found in namespace {ns}. Check the name and -n, or run "
                    f"`sftrl submit FILE`")
    status = obj.get("status") or {}
    try:
        plan, unfingerprinted = _recorded_plan(obj)
    except spec_mod.SpecError as e:
        print(f"experiment {args.name}: spec invalid:\n{e.render()}")
        return 1
    attempts: dict[str, int] = {sid: int(rec.get("attempt") or 0) for sid, rec in (status.get("attempts") or {}).items()}
    for job in api.list_jobs(ns, f"{render.SELECTOR},{render.L_STORAGE}={render.storage_key(plan.root)}"):
        parsed = render.stage_of(job)
        if parsed:
            attempts[parsed[0]] = max(attempts.get(parsed[0], 0), parsed[1])
    states = status.get("stages") or {}
    c = status.get("counts") or {}
    print(f"experiment {args.name}  namespace {ns}  phase {status.get('phase', 'Unknown (not reconciled yet)')}  "
          f"{c.get('succeeded', 0)}/{len(plan.stages)} succeeded")
    for cond in status.get("conditions") or []:
        if cond.get("type") in ("Valid", "Degraded") and cond.get("status") == ("False" if cond["type"] == "Valid" else "True"):
            print(f"  {cond['type']}: {cond.get('message')}")
    if unfingerprinted:
        print(f"  stage ids are provisional: the operator has not fingerprinted {', '.join(unfingerprinted)} yet")
    reasons = status.get("skipped") or {}
    print(f"\n{'STAGE':<20} {'KIND':<7} {'RUN':<44} {'STATE':<10} ATTEMPTS")
    for sid, st in plan.stages.items():
        state = states.get(sid, "pending")
        why = f"  {reasons[sid]}" if sid in reasons else ""
        print(f"{sid:<20} {st.kind:<7} {st.labels.run:<44} {state:<10} {attempts.get(sid, 0)}{why}")
        if state == "failed":
            print(f"{'':<20} ^ {_failure_line(obj, plan, sid, ns)}")
    return 0


@_guard
def cmd_logs(args: argparse.Namespace) -> int:
    api, ns = _connect(args)
    obj = api.get_experiment(ns, args.name)
    if obj is None:
        return _err(f"experiment {args.name} was not found in namespace {ns}. Check the name and -n")
    try:
        plan = _recorded_plan(obj)[0]
    except spec_mod.SpecError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_USAGE
    matches = [s for s in plan.stages if s.startswith(args.stage)]
    if len(matches) != 1:
        what = "matches no stage" if not matches else f"matches {len(matches)} stages ({', '.join(matches[:5])})"
        return _err(f"'{args.stage}' {what} of experiment {args.name}. Give a stage id from `sftrl status {args.name}`")
    sid = matches[0]
    jobs = [j for j in api.list_jobs(ns, f"{render.SELECTOR},{render.L_STAGE}={sid},"
                                         f"{render.L_STORAGE}={render.storage_key(plan.root)}")]
    if not jobs:
        return _err(f"stage {sid} has no PyTorchJob yet (it is pending). Try again once it runs")
    job = max(jobs, key=lambda j: (render.stage_of(j) or ("", 0))[1])
    jname = job["metadata"]["name"]
    pods = api.list_pods(ns, f"training.kubeflow.org/job-name={jname},training.kubeflow.org/replica-type=master")
    if not pods:
        return _err(f"PyTorchJob {jname} of stage {sid} has no master pod (queued, or cleaned up after it ended). "
                    f"Its outputs are under stages/{sid}/ in storage")
    pod = pods[0]["metadata"]["name"]
    print(f"==> {ns}/{pod} (stage {sid}, job {jname})", file=sys.stderr)
    for chunk in api.stream_log(ns, pod, follow=not args.no_follow):
        sys.stdout.write(chunk.decode("utf-8", errors="replace"))
        sys.stdout.flush()
    return 0


@_guard
def cmd_cancel(args: argparse.Namespace) -> int:
    api, ns = _connect(args)
    if api.get_experiment(ns, args.name) is None:
        return _err(f"experiment {args.name} was not found in namespace {ns}. Check the name and -n")
    api.patch_experiment(ns, args.name, {"metadata": {"annotations": {"sftrl.io/cancel": "true"}}})
    print(f"cancel requested for {args.name}: the operator deletes its running PyTorchJobs (stages another "
          f"running experiment shares keep running). Finished stages stay in storage; `sftrl submit` resumes.")
    return 0


@_guard
def cmd_operator(args: argparse.Namespace) -> int:
    from controller.kubernetes.operator import ClusterDefaults, Operator, make_metrics

    logging.basicConfig(level=os.environ.get("SFTRL_LOG_LEVEL", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from controller.kubernetes.executor import USER_AGENT

    api, ns = _connect(args, USER_AGENT)
    if args.namespace is None and "SFTRL_WATCH_NAMESPACE" in os.environ:
        ns = os.environ["SFTRL_WATCH_NAMESPACE"]
    metrics = make_metrics()
    server = metrics.serve(args.metrics_port, max_cycle_age_s=max(120.0, args.interval * 6))
    port = getattr(server, "server_port", None)
    op = Operator(api, ns or None, interval=args.interval, metrics=metrics, defaults=ClusterDefaults.from_env(),
                  max_actions=args.max_actions)
    logging.getLogger("sftrl.operator").info(
        "watching Experiments in %s every %.1fs; /metrics and /healthz on port %s",
        f"namespace {ns}" if ns else "all namespaces", args.interval, port)
    try:
        if args.once:
            op.cycle()
            return 0
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *a: stop.set())
        op.run(stop)
        return 0
    finally:
        if server is not None:
            server.shutdown()


# --- wiring --------------------------------------------------------------------------------------


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", default=None, help="namespace (default: the kubeconfig context's)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--context", default=None, help="kubeconfig context")


def register(sub: Any) -> None:
    """Add the Kubernetes subcommands to ``sftrl``'s subparsers."""
    r = sub.add_parser("render", help="write each stage's PyTorchJob and stage.json to a directory")
    r.add_argument("file")
    r.add_argument("-o", "--output", required=True, help="output directory")
    r.add_argument("-n", "--namespace", default=None, help="namespace of the jobs (default: spec.kubernetes.namespace)")
    r.add_argument("--no-fingerprints", action="store_true",
                   help="do not read the inputs: stage ids hash their URIs only (provisional; they differ from "
                        "`sftrl plan` and `sftrl submit` for inputs that are not builtin://)")
    r.set_defaults(func=cmd_render)

    s = sub.add_parser("submit", help="check the file like `sftrl validate`, then create or update the Experiment "
                                      "in the cluster with its inputs' fingerprints")
    s.add_argument("file")
    s.add_argument("--watch", action="store_true", help="run the operator loop here until the experiment ends")
    s.add_argument("--interval", type=float, default=5.0, help="seconds between cycles with --watch")
    s.add_argument("--storage", default=None, help="storage root for the cluster (overrides spec.storage)")
    _cluster_flags(s)
    s.set_defaults(func=cmd_submit)

    st = sub.add_parser("status", help="table of an experiment's stages: id, kind, run, state, attempts")
    st.add_argument("name")
    _cluster_flags(st)
    st.set_defaults(func=cmd_status)

    lg = sub.add_parser("logs", help="stream the log of a stage's master pod")
    lg.add_argument("name")
    lg.add_argument("stage", help="stage id (or a unique prefix)")
    lg.add_argument("--no-follow", action="store_true", help="print what is there and stop")
    _cluster_flags(lg)
    lg.set_defaults(func=cmd_logs)

    c = sub.add_parser("cancel", help="stop an experiment: the operator deletes its running jobs")
    c.add_argument("name")
    _cluster_flags(c)
    c.set_defaults(func=cmd_cancel)

    o = sub.add_parser("operator", help="the in-cluster loop over Experiments (the Helm chart runs it)")
    _cluster_flags(o)
    o.add_argument("--interval", type=float, default=float(os.environ.get("SFTRL_INTERVAL", "10")),
                   help="seconds between reconcile cycles")
    o.add_argument("--metrics-port", type=int, default=int(os.environ.get("SFTRL_PORT", "8080")),
                   help="port of /metrics and /healthz (0: any free port)")
    o.add_argument("--max-actions", type=int, default=50, help="job creates/deletes per experiment per cycle")
    o.add_argument("--once", action="store_true", help="run one cycle and exit")
    o.set_defaults(func=cmd_operator)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sftrl")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SystemExit as e:
        return int(e.code or 0)


if __name__ == "__main__":
    sys.exit(main())
