#!/usr/bin/env bash
# Build, and optionally push, an sftrl image with the versions pinned in images/versions.env.
#
# Usage: images/build.sh runtime|controller [--push] [--image REPO:TAG]
#   default image: ghcr.io/sftrl/<name>:<appVersion of charts/sftrl/Chart.yaml>
#   env DOCKER (default docker; podman works), BUILD_FLAGS (extra flags, e.g. --platform linux/amd64)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
name=${1:?usage: images/build.sh runtime|controller [--push] [--image REPO:TAG]}
shift
case "$name" in runtime|controller) ;; *) echo "unknown image '$name', because only runtime and controller exist. Use one of them." >&2; exit 2;; esac
push=0
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$root/charts/sftrl/Chart.yaml")
image="ghcr.io/sftrl/$name:$version"
while [ $# -gt 0 ]; do
  case "$1" in
    --push) push=1 ;;
    --image) image=${2:?--image needs REPO:TAG}; shift ;;
    *) echo "unknown option '$1'. Use --push or --image REPO:TAG." >&2; exit 2 ;;
  esac
  shift
done
args=()
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in ''|'#'*) continue ;; esac
  args+=(--build-arg "$line")
done < "$root/images/versions.env"
docker=${DOCKER:-docker}
# shellcheck disable=SC2086
"$docker" build ${BUILD_FLAGS:-} "${args[@]}" -f "$root/images/$name/Dockerfile" -t "$image" "$root"
[ "$push" = 1 ] && "$docker" push "$image"
echo "$image"
