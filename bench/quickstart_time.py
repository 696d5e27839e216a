"""Wall time of the quickstart on this machine: a cold run, then a rerun that must reuse every stage.

    python bench/quickstart_time.py [--storage DIR] [--experiment examples/quickstart.yaml]

Prints both wall times and the stage counts. Targets (issue 14): cold < 3 min on 2 cores,
reused < 30 s. Numbers, not assertions: the machines are noisy.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(exp: str, storage: str) -> tuple[float, str, int]:
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "controller.cli", "run", exp, "--storage", storage],
                       cwd=ROOT, capture_output=True, text=True)
    return time.time() - t0, r.stdout + r.stderr, r.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--experiment", default=str(ROOT / "examples" / "quickstart.yaml"))
    ap.add_argument("--storage", default=None, help="storage root (default: a fresh temp dir)")
    args = ap.parse_args()
    storage = args.storage or tempfile.mkdtemp(prefix="sftrl-bench-")
    cold, out, rc = run(args.experiment, storage)
    print(out)
    if rc != 0:
        print(f"quickstart failed (exit {rc})", file=sys.stderr)
        return rc
    warm, out2, rc2 = run(args.experiment, storage)
    launched = len(re.findall(r"start  ", out2))
    print(f"quickstart cold run:   {cold:7.1f} s  (target < 180 s on 2 cores)")
    print(f"quickstart rerun:      {warm:7.1f} s  (target < 30 s), stages launched again: {launched}")
    return rc2


if __name__ == "__main__":
    sys.exit(main())
