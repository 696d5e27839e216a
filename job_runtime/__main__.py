"""`python -m job_runtime <kind> --config <uri>` (or under torchrun): run one stage.

The stage reads its stage.json and nothing else but credentials and launcher variables. Exit codes
follow contract.EXIT_*: 0 done, 1 a code or data failure, 2 an invalid config, 200 a retryable
infrastructure failure (the training operator's ExitCode policy retries 128-255 only), 201 the
stage's lease belongs to another live writer.

The stage runs holding its lease (job_runtime/io/lease.py): at most one process writes a stage's
output at a time, whoever started it (`sftrl run`, a Kubernetes pod, a person).

`python -m job_runtime score BENCHMARK --input rows.jsonl --output scored.jsonl` re-scores saved
generations without a model.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pydantic import ValidationError

from job_runtime.io import lease, scratch, storage
from job_runtime.contract import EXIT_CONFIG, EXIT_FAILED, EXIT_LEASE, EXIT_RETRYABLE, STAGE_KINDS, StageConfig
from job_runtime.errors import StageError


def load_config(uri: str) -> StageConfig:
    raw = storage.read_json(storage.normalize(uri) if "://" not in uri else uri)
    return StageConfig.model_validate(raw)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "score":
        from job_runtime.eval.score import main as score_main

        return score_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m job_runtime", description="Run one sftrl stage.")
    p.add_argument("kind", choices=STAGE_KINDS)
    p.add_argument("--config", required=True, help="URI of the stage's stage.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("job_runtime")
    scratch.install()  # SIGTERM exits through finally: no scratch folder is left behind
    scratch.sweep()  # ... and those of SIGKILLed stages are removed now
    try:
        cfg = load_config(args.config)
    except storage.StorageUnavailable as e:
        log.error("%s", e)
        return EXIT_RETRYABLE
    except (storage.StorageError, ValueError, ValidationError) as e:
        log.error("cannot read the stage config %s, because %s. Re-render it with `sftrl plan`/`sftrl run`.",
                  args.config, str(e).splitlines()[0])
        return EXIT_CONFIG
    if cfg.kind != args.kind:
        log.error("stage %s is a %s stage, but was started as %s. Start it as `%s`.", cfg.id, cfg.kind, args.kind, cfg.kind)
        return EXIT_CONFIG
    log.info("stage %s (%s) -> %s", cfg.id, cfg.kind, cfg.output)
    try:
        # the lease first (a launcher's hand-over is adopted at once), then the training stack's imports
        with lease.hold(cfg.output, note=f"{cfg.kind} stage {cfg.id}"):
            storage.clear_failure(cfg.output)  # only the lease holder may touch the stage's records
            stage = importlib.import_module(f"job_runtime.stages.{cfg.kind}")
            stage.run(cfg)
    except lease.LeaseLost as e:
        log.error("%s; not running stage %s, because another writer owns it", e, cfg.id)
        return EXIT_LEASE
    except storage.StorageUnavailable as e:
        log.error("%s", e)
        storage.write_failure(cfg.output, error=str(e).splitlines()[0], exit_code=EXIT_RETRYABLE)
        return EXIT_RETRYABLE
    except (StageError, storage.StorageError) as e:
        log.error("%s", e)
        storage.write_failure(cfg.output, error=str(e).splitlines()[0], exit_code=EXIT_FAILED)
        return EXIT_FAILED
    except BaseException as e:  # a bug, Ctrl-C or SIGTERM: record it, then fail as before (traceback in the log)
        code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 130 if isinstance(e, KeyboardInterrupt) else EXIT_FAILED
        what = f"{type(e).__name__}: {e}".splitlines()[0] if not isinstance(e, SystemExit) else f"stopped by a signal (exit {code})"
        storage.write_failure(cfg.output, error=what, exit_code=code)
        raise
    log.info("stage %s done", cfg.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
