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
from controller import status as status_mod
from controller.plan import Plan, build_plan, explain_changes
from controller.reconcile import Observed, Phase, Policy, State, counts, starved
from job_runtime.io import storage
from job_runtime.contract import LOG_TXT, PLAN_JSON, SPEC_YAML, experiment_uri

EXIT_USAGE = 2


def _load(path: str) -> spec_mod.Experiment:
    try:
        return spec_mod.load(path)
    except spec_mod.SpecError as e:
        print(e.render(), file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _say(msg: str) -> None:
    print(msg, flush=True)


def _problems(source: str, problems: list[str]) -> int:
    print(spec_mod.SpecError(source, problems).render(), file=sys.stderr)
    return EXIT_USAGE


def _notes(notes: list[str]) -> None:
    for n in notes:
        print(f"note: {n}", file=sys.stderr)


def _preflight(exp: spec_mod.Experiment, max_parallel: int | None = None):
    from controller import preflight

    return preflight.check(exp, max_parallel=max_parallel)


def cmd_validate(args: argparse.Namespace) -> int:
    exp = _load(args.file)
    s = exp.spec
    if not args.schema_only:
        pre = _preflight(exp)
        _notes(pre.notes)
        if pre.problems:
            return _problems(args.file, pre.problems)
    checked = "" if args.schema_only else "; inputs, TRL keys and storage checked"
    _say(f"{args.file}: ok: experiment '{exp.metadata.name}', {len(s.models)} model(s) x {len(s.data)} data x "
         f"{len(s.scales)} scale(s) x {len(s.methods)} method(s) x {len(s.seeds)} seed(s); "
         f"storage {storage.normalize(s.storage)}{checked}")
    return 0


def stage_statuses(plan: Plan) -> dict[str, status_mod.StageStatus]:
    """Every stage's status from storage; raises StorageError after the first stage that cannot be read."""
    return status_mod.observe({sid: st.config.output for sid, st in plan.stages.items()})


def _fingerprinted_plan(exp: spec_mod.Experiment, source: str) -> tuple[Plan, list[str], list[str]]:
    """(plan whose ids follow the inputs' content, problems, notes)."""
    from controller import fingerprint

    fp = fingerprint.collect(exp)
    return build_plan(exp, fp.values, source=os.path.abspath(source)), fp.problems, fp.notes


def cmd_plan(args: argparse.Namespace) -> int:
    exp = _load(args.file)
    if args.no_status:
        plan, problems, notes = build_plan(exp, source=os.path.abspath(args.file)), [], []
    else:
        plan, problems, notes = _fingerprinted_plan(exp, args.file)
    _notes(notes)
    for p in problems:
        print(f"note: {p}", file=sys.stderr)
    if args.explain or args.stage:
        from controller.explain import ExplainError, explain

        try:
            _say(explain(exp, plan, args.stage).rstrip("\n"))
        except ExplainError as e:
            print(e, file=sys.stderr)
            return EXIT_USAGE
        return 0
    statuses: dict[str, status_mod.StageStatus] = {}
    why: dict[str, str] = {}
    if not args.no_status:
        try:
            statuses = stage_statuses(plan)
        except storage.StorageError as e:
            print(f"note: cannot tell which stages are done, because storage is not readable: {e}", file=sys.stderr)
        previous = status_mod.read_previous_plan(plan.root, plan.experiment) if statuses else None
        why = explain_changes(previous, plan) if previous else {}
    users: dict[str, list[str]] = {}
    for r in plan.runs:
        for sid in (r.distill, r.probe, *r.train, r.eval):
            if sid is not None:
                users.setdefault(sid, []).append(r.name)
    _say(f"experiment {plan.experiment}  storage {plan.root}")
    if args.no_status or problems:
        what = "were not read (--no-status)" if args.no_status else "could not all be read (notes above)"
        _say("  stage ids are provisional: the inputs' content " + what)
    _say(f"\n{len(plan.runs)} runs")
    for r in plan.runs:
        train = [*r.train[:-1], r.probe, r.train[-1]] if r.probe else list(r.train)  # the probe guards RL
        chain = " -> ".join([*([r.distill] if r.distill else []), *train, r.eval])
        _say(f"  {r.name:<44} {chain}")
    skipped: dict[str, str] = {}
    if statuses and plan.gates:  # rl.min_signal: stages whose finished probe predicts too little signal
        from controller import gates

        observed = {sid: Observed(State.SUCCEEDED if s.done else State.PENDING) for sid, s in statuses.items()}
        skipped = gates.skipped(gates.observe(plan, observed, {}))
    if statuses:
        n = status_mod.summarize(statuses.values())
        n_done = n[status_mod.DONE]
        failed = f", {n[status_mod.FAILED]} failed" if n[status_mod.FAILED] else ""
        known = (f"{n_done} done{failed}, {len(plan.stages) - n_done - len(skipped)} to run"
                 + (f", {len(skipped)} skipped: {next(iter(skipped.values()))}" if skipped else ""))
    else:
        known = "status unknown"
    _say(f"\n{len(plan.stages)} stages ({known})")
    _say(f"  {'stage':<18} {'status':<10} {'parents':<18} used by")
    for sid, st in plan.stages.items():
        state = statuses.get(sid)
        if state is None:
            shown = "?"
        elif sid in skipped and not state.done:
            shown = "skipped"
        else:
            shown = {"waiting": "-", "incomplete": "not done"}.get(state.state, state.state)
        shared = users.get(sid, [])
        note = ", ".join(shared) + (f"  (shared by {len(shared)} runs)" if len(shared) > 1 else "")
        _say(f"  {sid:<18} {shown:<10} {','.join(st.parents + st.after) or '-':<18} {note}")
        if state is not None and state.state in (status_mod.FAILED, status_mod.INCOMPLETE):
            _say(f"  {'':<18} ^ {state.describe()}")
        if sid in why and (state is None or not state.done):
            _say(f"  {'':<18} ^ new stage: {why[sid]}")
    return 0


def _write_experiment(exp: spec_mod.Experiment, plan: Plan) -> str:
    uri = experiment_uri(plan.root, plan.experiment)
    storage.write_text(storage.join(uri, SPEC_YAML), spec_mod.dump(exp))
    storage.write_json(storage.join(uri, PLAN_JSON), plan.to_json())
    return uri


def name_taken_by(plan: Plan) -> str | None:
    """The other experiment file whose last plan under this name and storage is saved, or None."""
    previous = status_mod.read_previous_plan(plan.root, plan.experiment)
    other = (previous or {}).get("source")
    return other if other and plan.source and other != plan.source else None


def _name_clash(plan: Plan, what: str, fix: str) -> str:
    return (f"experiment name '{plan.experiment}' in storage {plan.root} belongs to {name_taken_by(plan)}, "
            f"because that file ran there last; {what} would replace its plan and report. "
            f"Rename metadata.name, use another storage, or {fix}")


class _Progress:
    """Plain progress lines: launches, finishes with durations, failures with the log's tail.

    A failure is also recorded in the stage's ``_FAILED`` (log path, exit code, error line), so
    ``sftrl plan`` and the report show it after the run.
    """

    def __init__(self, plan: Plan, start: float):
        self.plan, self.start, self.last_beat = plan, start, start
        self.skipped: set[str] = set()

    def _what(self, sid: str) -> str:
        st = self.plan.stages[sid]
        return f"{sid} ({st.labels.run if st.kind not in ('eval', 'probe') else st.kind + ' ' + st.labels.run})"

    def __call__(self, event: str, sid: str, info: dict) -> None:
        st = self.plan.stages[sid]
        what = self._what(sid)
        t = f"[{time.time() - self.start:6.0f}s]"
        if event == "launched":
            _say(f"{t} start  {what}  attempt {info['attempt']}  log: {info['log']}")
        elif event == "succeeded":
            _say(f"{t} done   {what}  in {info['seconds']:.0f}s")
            if st.kind == "probe":
                self._probe(sid)
        elif event == "waiting":  # another writer holds the stage's lease
            _say(f"{t} wait   {what}  held elsewhere: {info['why']}")
        elif event == "failed":
            status_mod.record_failure(st.config.output, info["log"], info["tail"], info["returncode"])
            again = "will retry" if info["retryable"] else "not retryable"
            _say(f"{t} FAILED {what}  exit {info['returncode']} ({again}); last lines of {info['log']}:")
            for line in info["tail"].splitlines():
                _say(f"         | {line}")

    def _probe(self, sid: str) -> None:
        """The probe's prediction, as soon as it is known (before the RL stage it guards starts)."""
        from controller import gates

        res = gates.probe_result(self.plan.stages[sid].config.output)
        signal = gates.predicted_signal(res)
        if res is None or signal is None:
            return
        k = res.get("samples", "k")
        rl = [s for s, g in self.plan.gates.items() if g.probe == sid]
        verdict = ""
        for s in rl:
            why = starved(signal, self.plan.gates[s].min_signal)
            verdict = f"; {'RL will be skipped, ' + why if why else 'RL will run'}"
        _say(f"         probe: predicted signal {signal:.2f} ({res.get('prompts')} prompts x {k} rollouts had mixed "
             f"outcomes in {100 * signal:.0f}%); pass@1 {res.get('pass_at_1', 0):.3f}, pass@{k} "
             f"{res.get('pass_at_k', 0):.3f}{verdict}")

    def tick(self, observed: dict[str, Observed]) -> None:
        for sid, o in observed.items():
            if o.state is State.SKIPPED and sid not in self.skipped:
                self.skipped.add(sid)
                _say(f"[{time.time() - self.start:6.0f}s] skip   {self._what(sid)}  {o.reason}")
        now = time.time()
        if now - self.last_beat >= 30:
            self.last_beat = now
            c = counts(self.plan.dag(), observed)
            running = [s for s, o in observed.items() if o.state is State.RUNNING]
            _say(f"[{now - self.start:6.0f}s] {c['succeeded']}/{len(observed)} done; running: {', '.join(running) or '-'}")


def resolve_rerun(plan: Plan, names: list[str]) -> tuple[list[str], list[str]]:
    """(stage ids, problems) for --rerun names: a stage id (or a unique prefix of one) or a run name
    (all its stages, training and eval)."""
    import difflib

    runs = {r.name: [*r.train, r.eval] for r in plan.runs}
    out: list[str] = []
    problems = []
    for name in names:
        hits = runs.get(name) or [sid for sid in plan.stages if sid.startswith(name)]
        if name in plan.stages:
            hits = [name]
        if not hits or (name not in runs and len(hits) > 1):
            near = difflib.get_close_matches(name, [*runs, *plan.stages], n=1, cutoff=0.5)
            what = f"matches {len(hits)} stages" if hits else "is neither a run nor a stage of this plan"
            hint = f"; did you mean '{near[0]}'?" if near else ". See `sftrl plan FILE` for run names and stage ids"
            problems.append(f"--rerun {name}: {what}{hint}")
            continue
        out += [sid for sid in hits if sid not in out]
    return out, problems


def invalidate(plan: Plan, sid: str) -> None:
    """Forget a stage's results so that it runs again from scratch (its log is kept)."""
    out = plan.stages[sid].config.output
    if storage.is_local(out):
        path = storage.local_path(out)
        for child in (path.iterdir() if path.is_dir() else []):
            if child.name not in (LOG_TXT, ".lock"):
                storage.delete_prefix(storage.normalize(str(child)))
    else:
        storage.delete_prefix(out)


def cmd_run(args: argparse.Namespace) -> int:
    from controller.executors.local import LocalExecutor
    from controller.loop import drive
    from job_runtime.io import scratch

    start = time.time()
    exp = _load(args.file)
    if args.storage:
        exp.spec.storage = args.storage
    pre = _preflight(exp, args.max_parallel)
    _notes(pre.notes)
    if pre.problems:
        return _problems(args.file, pre.problems)
    plan = build_plan(exp, pre.fingerprints, source=os.path.abspath(args.file))
    if name_taken_by(plan) and not args.replace:
        return _problems(args.file, [_name_clash(plan, "running this file", "pass --replace")])
    rerun, problems = resolve_rerun(plan, list(plan.stages) if args.force else args.rerun or [])
    if problems:
        return _problems(args.file, problems)
    previous = status_mod.read_previous_plan(plan.root, plan.experiment)
    try:
        for sid in rerun:
            invalidate(plan, sid)
        uri = _write_experiment(exp, plan)
        statuses = stage_statuses(plan)
    except storage.StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    scratch.sweep()  # scratch folders of runs killed earlier
    ex = exp.spec.execution
    policy = Policy(max_attempts=ex.max_attempts, backoff_seconds=ex.backoff_seconds,
                    max_parallel=args.max_parallel if args.max_parallel is not None else ex.max_parallel)
    done = sum(st.done for st in statuses.values())
    again = f", {len(rerun)} to redo (--{'force' if args.force else 'rerun'})" if rerun else ""
    _say(f"experiment {plan.experiment}: {len(plan.runs)} runs, {len(plan.stages)} stages "
         f"({done} already done{again}), up to {policy.max_parallel} at a time; storage {plan.root}")
    why = explain_changes(previous, plan) if previous else {}
    for sid, st in statuses.items():
        if st.state == status_mod.INCOMPLETE:
            _say(f"  {sid}: {st.describe()}")
        elif sid in why and not st.done:
            _say(f"  {sid}: new stage: {why[sid]}")
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
        skipped = [s for s, o in outcome.observed.items() if o.state is State.SKIPPED]
        done = (f"{len(plan.stages) - len(skipped)} of {len(plan.stages)} stages done, {len(skipped)} skipped on purpose "
                f"({', '.join(skipped)})" if skipped else f"all {len(plan.stages)} stages done")
        _say(f"\n{done}; wall time {wall:.1f}s ({wall / 60:.1f} min)")
        return 0
    failed = [s for s, o in outcome.observed.items() if o.state is State.FAILED]
    _say(f"\n{len(failed)} stage(s) failed; wall time {wall:.1f}s:")
    for sid in failed:
        st = plan.stages[sid]
        _say(f"  {sid} ({st.labels.run}): {status_mod.stage_status(st.config.output).describe()}")
    _say(f"Fix the cause and run `sftrl run {args.file}` again: finished stages are reused.")
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


def cmd_verify(args: argparse.Namespace) -> int:
    exp = _load(args.file)
    if args.storage:
        exp.spec.storage = args.storage
    plan, problems, notes = _fingerprinted_plan(exp, args.file)
    _notes(notes)
    if problems:
        return _problems(args.file, problems)
    bad = n_done = 0
    try:
        for sid, st in plan.stages.items():
            out = st.config.output
            if storage.read_manifest(out) is None:
                _say(f"  {sid:<18} not done")
                continue
            found = storage.manifest_problems(out, full=True)
            n_done += not found
            bad += bool(found)
            _say(f"  {sid:<18} " + ("ok (sizes and sha256 match the manifest)" if not found else "MISMATCH: " + "; ".join(found)))
    except storage.StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    _say(f"\n{n_done} stage(s) verified, {bad} with altered files, {len(plan.stages) - n_done - bad} not done.")
    if bad:
        _say(f"Redo the altered ones with `sftrl run {args.file} --rerun STAGE`.")
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from controller.report.load import report_command

    if args.output:
        why = storage.unwritable_reason(args.output)
        if why:
            return _problems("sftrl report", [f"-o {args.output}: {why}. Choose a writable folder"])
    if not args.experiment.endswith((".yaml", ".yml")):
        return report_command(args.experiment, args.output, args.storage)
    # A file: report the plan this file makes now, not whatever was saved last under its name.
    exp = _load(args.experiment)
    if args.storage:
        exp.spec.storage = args.storage
    plan, problems, notes = _fingerprinted_plan(exp, args.experiment)
    _notes(notes + problems)
    if name_taken_by(plan) and not args.output:
        return _problems(args.experiment, [_name_clash(plan, "its report", "pass -o DIR to write this file's report elsewhere")])
    return report_command(args.experiment, args.output, plan=plan.to_json())


def cmd_eval(args: argparse.Namespace) -> int:
    # Scoring lives in job_runtime (the controller never imports it): run it as its own process.
    os.execv(sys.executable, [sys.executable, "-m", "job_runtime", "score", *args.rest])
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sftrl", description="SFT-versus-RL studies on vision-language models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", help="check an experiment file; every error at once")
    v.add_argument("file")
    v.add_argument("--schema-only", action="store_true",
                   help="check the file alone: not its inputs, TRL keys or storage (no network, no storage access)")
    v.set_defaults(func=cmd_validate)

    pl = sub.add_parser("plan", help="show the runs and stages of an experiment, and which are done")
    pl.add_argument("file")
    pl.add_argument("stage", nargs="?", help="with --explain: one stage id (or unique prefix)")
    pl.add_argument("--no-status", action="store_true", help="read neither storage nor the inputs (ids are provisional)")
    pl.add_argument("--explain", action="store_true",
                    help="print each training stage's resolved TRL arguments, pixel bounds and frozen modules, with sources")
    pl.set_defaults(func=cmd_plan)

    r = sub.add_parser("run", help="run the whole matrix on this machine, then print the results")
    r.add_argument("file")
    r.add_argument("--max-parallel", type=int, default=None, help="stages at once, >= 1 (default: execution.max_parallel)")
    r.add_argument("--storage", default=None, help="override spec.storage")
    r.add_argument("--rerun", action="append", metavar="STAGE_OR_RUN",
                   help="redo this stage (id) or every stage of this run (name) although done; repeatable")
    r.add_argument("--force", action="store_true", help="redo every stage of the plan")
    r.add_argument("--replace", action="store_true",
                   help="take over the experiment name in this storage from another experiment file")
    r.set_defaults(func=cmd_run)

    vf = sub.add_parser("verify", help="check every finished stage's files against its manifest (sizes and sha256)")
    vf.add_argument("file")
    vf.add_argument("--storage", default=None, help="override spec.storage")
    vf.set_defaults(func=cmd_verify)

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
    except storage.StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # e.g. an output folder that cannot be written
        where = f" {e.filename}" if e.filename else ""
        print(f"error: cannot use{where}, because {e.strerror or e}. Check the path and its permissions.", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
