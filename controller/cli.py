"""`sftrl`: validate, plan, run and report experiments; Kubernetes commands come from controller.kubernetes.cli.

Every user error is one clear message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from controller import spec as spec_mod
from controller.plan import Plan, build_plan
from controller.reconcile import Observed, Phase, Policy, State, counts
from job_runtime.io import storage
from job_runtime.contract import PLAN_JSON, SPEC_YAML, experiment_uri

EXIT_USAGE = 2


def _load(path: str) -> spec_mod.Experiment:
    try:
        return spec_mod.load(path)
    except spec_mod.SpecError as e:
        print(e.render(), file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _say(msg: str) -> None:
    print(msg, flush=True)


def cmd_validate(args: argparse.Namespace) -> int:
    exp = _load(args.file)
    s = exp.spec
    _say(f"{args.file}: ok: experiment '{exp.metadata.name}', {len(s.models)} model(s) x {len(s.data)} data x "
         f"{len(s.scales)} scale(s) x {len(s.methods)} method(s) x {len(s.seeds)} seed(s)")
    return 0


def stage_done(plan: Plan) -> dict[str, bool]:
    """Which stages have their _SUCCESS manifest (one HEAD each on S3, 16 at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    outputs = {sid: st.config.output for sid, st in plan.stages.items()}
    if storage.is_local(plan.root):
        return {sid: storage.is_complete(out) for sid, out in outputs.items()}
    with ThreadPoolExecutor(16) as pool:
        return dict(zip(outputs, pool.map(storage.is_complete, outputs.values())))


def cmd_plan(args: argparse.Namespace) -> int:
    exp = _load(args.file)
    plan = build_plan(exp)
    if args.explain or args.stage:
        from controller.explain import ExplainError, explain

        try:
            _say(explain(exp, plan, args.stage).rstrip("\n"))
        except ExplainError as e:
            print(e, file=sys.stderr)
            return EXIT_USAGE
        return 0
    done: dict[str, bool] = {}
    if not args.no_status:
        try:
            done = stage_done(plan)
        except storage.StorageError as e:
            print(f"note: cannot tell which stages are done, because storage is not readable: {e}", file=sys.stderr)
    users: dict[str, list[str]] = {}
    for r in plan.runs:
        for sid in (*r.train, r.eval):
            users.setdefault(sid, []).append(r.name)
    _say(f"experiment {plan.experiment}  storage {plan.root}")
    _say(f"\n{len(plan.runs)} runs")
    for r in plan.runs:
        chain = " -> ".join([*r.train, r.eval])
        _say(f"  {r.name:<44} {chain}")
    n_done = sum(done.values())
    known = f"{n_done} done, {len(plan.stages) - n_done} to run" if done else "status unknown"
    _say(f"\n{len(plan.stages)} stages ({known})")
    _say(f"  {'stage':<18} {'status':<8} {'parents':<18} used by")
    for sid, st in plan.stages.items():
        status = ("done" if done[sid] else "-") if done else "?"
        shared = users.get(sid, [])
        note = ", ".join(shared) + (f"  (shared by {len(shared)} runs)" if len(shared) > 1 else "")
        _say(f"  {sid:<18} {status:<8} {','.join(st.parents) or '-':<18} {note}")
    return 0


def _write_experiment(exp: spec_mod.Experiment, plan: Plan) -> str:
    uri = experiment_uri(plan.root, plan.experiment)
    storage.write_text(storage.join(uri, SPEC_YAML), spec_mod.dump(exp))
    storage.write_json(storage.join(uri, PLAN_JSON), plan.to_json())
    return uri


class _Progress:
    """Plain progress lines: launches, finishes with durations, failures with the log's tail."""

    def __init__(self, plan: Plan, start: float):
        self.plan, self.start, self.last_beat = plan, start, start

    def __call__(self, event: str, sid: str, info: dict) -> None:
        st = self.plan.stages[sid]
        what = f"{sid} ({st.labels.run if st.kind != 'eval' else 'eval ' + st.labels.run})"
        t = f"[{time.time() - self.start:6.0f}s]"
        if event == "launched":
            _say(f"{t} start  {what}  attempt {info['attempt']}  log: {info['log']}")
        elif event == "succeeded":
            _say(f"{t} done   {what}  in {info['seconds']:.0f}s")
        elif event == "waiting":  # another writer holds the stage's lease
            _say(f"{t} wait   {what}  held elsewhere: {info['why']}")
        elif event == "failed":
            again = "will retry" if info["retryable"] else "not retryable"
            _say(f"{t} FAILED {what}  exit {info['returncode']} ({again}); last lines of {info['log']}:")
            for line in info["tail"].splitlines():
                _say(f"         | {line}")

    def tick(self, observed: dict[str, Observed]) -> None:
        now = time.time()
        if now - self.last_beat >= 30:
            self.last_beat = now
            c = counts(self.plan.dag(), observed)
            running = [s for s, o in observed.items() if o.state is State.RUNNING]
            _say(f"[{now - self.start:6.0f}s] {c['succeeded']}/{len(observed)} done; running: {', '.join(running) or '-'}")


def cmd_run(args: argparse.Namespace) -> int:
    from controller.executors.local import LocalExecutor
    from controller.loop import drive

    start = time.time()
    exp = _load(args.file)
    if args.storage:
        exp.spec.storage = args.storage
    plan = build_plan(exp)
    try:
        uri = _write_experiment(exp, plan)
    except storage.StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    ex = exp.spec.execution
    policy = Policy(max_attempts=ex.max_attempts, backoff_seconds=ex.backoff_seconds,
                    max_parallel=args.max_parallel or ex.max_parallel)
    done = sum(stage_done(plan).values())
    _say(f"experiment {plan.experiment}: {len(plan.runs)} runs, {len(plan.stages)} stages "
         f"({done} already done), up to {policy.max_parallel} at a time; storage {plan.root}")
    progress = _Progress(plan, start)
    executor = LocalExecutor(on_event=progress, max_parallel=policy.max_parallel or 1)

    def _term(signum, frame):  # SIGTERM behaves like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        outcome = drive(plan, executor, policy, on_tick=progress.tick)
    except KeyboardInterrupt:
        executor.shutdown(plan)
        _say(f"\ninterrupted after {time.time() - start:.0f}s; finished stages are kept. "
             f"Run `sftrl run {args.file}` again to resume.")
        return 130
    _say("")
    _print_results(plan, uri)
    wall = time.time() - start
    if outcome.phase is Phase.SUCCEEDED:
        _say(f"\nall {len(plan.stages)} stages done; wall time {wall:.1f}s ({wall / 60:.1f} min)")
        return 0
    failed = [s for s, o in outcome.observed.items() if o.state is State.FAILED]
    _say(f"\n{len(failed)} stage(s) failed: {', '.join(failed)}; wall time {wall:.1f}s. "
         f"See stages/<id>/log.txt, fix the cause, and run again: finished stages are reused.")
    return 1


def _print_results(plan: Plan, uri: str) -> None:
    from controller.report import load as report

    out = storage.join(uri, "report")
    try:
        text = report.summary_text(plan.root, plan.experiment, out)
    except Exception as e:  # the report must never hide the run's own outcome
        text = f"(report failed: {e}; run `sftrl report` to retry)"
    _say(text)
    _say(f"\nartifacts: {plan.root}/stages/<id>/   experiment: {uri}/   report: {out}/")


def cmd_report(args: argparse.Namespace) -> int:
    from controller.report.load import report_command

    return report_command(args.experiment, args.output, args.storage)


def cmd_eval(args: argparse.Namespace) -> int:
    # Scoring lives in job_runtime (the controller never imports it): run it as its own process.
    os.execv(sys.executable, [sys.executable, "-m", "job_runtime", "score", *args.rest])
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sftrl", description="SFT-versus-RL studies on vision-language models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", help="check an experiment file; every error at once")
    v.add_argument("file")
    v.set_defaults(func=cmd_validate)

    pl = sub.add_parser("plan", help="show the runs and stages of an experiment, and which are done")
    pl.add_argument("file")
    pl.add_argument("stage", nargs="?", help="with --explain: one stage id (or unique prefix)")
    pl.add_argument("--no-status", action="store_true", help="do not read storage")
    pl.add_argument("--explain", action="store_true",
                    help="print each training stage's resolved TRL arguments, pixel bounds and frozen modules, with sources")
    pl.set_defaults(func=cmd_plan)

    r = sub.add_parser("run", help="run the whole matrix on this machine, then print the results")
    r.add_argument("file")
    r.add_argument("--max-parallel", type=int, default=None, help="stages at once (default: execution.max_parallel)")
    r.add_argument("--storage", default=None, help="override spec.storage")
    r.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="tables and plots of an experiment, from storage alone")
    rep.add_argument("experiment", help="experiment file, experiment name in ./runs, or experiments/<name> URI")
    rep.add_argument("-o", "--output", default=None, help="output directory (default: <storage>/experiments/<name>/report)")
    rep.add_argument("--storage", default=None, help="storage root when EXPERIMENT is a name")
    rep.set_defaults(func=cmd_report)

    ev = sub.add_parser("eval", help="evaluation tools")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True, metavar="TOOL")
    sc = ev_sub.add_parser("score", add_help=False,
                           help="re-score saved generations: score BENCHMARK --input rows.jsonl --output scored.jsonl")
    sc.add_argument("rest", nargs=argparse.REMAINDER)
    sc.set_defaults(func=cmd_eval)

    try:
        from controller.kubernetes import cli as cli_k8s
    except ImportError:  # the Kubernetes extra is optional
        cli_k8s = None
    if cli_k8s is not None:
        cli_k8s.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["eval", "score"]:  # everything after it belongs to the scorer, --help included
        return cmd_eval(argparse.Namespace(rest=argv[2:]))
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SystemExit as e:
        return int(e.code or 0)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
