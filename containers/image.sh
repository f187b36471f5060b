#!/usr/bin/env bash
# Builds sarcomakit's container images from the Containerfile (make image). Environment:
#   VARIANT=cpu|cuda       (cpu)
#   TARGETS="cli server"   any of cli, server, federated-site
#   BASE_IMAGE=...         a Debian bookworm image (default python:3.11-slim-bookworm); `local`, or a default
#                          that cannot be pulled, builds localhost/bookworm-min with debootstrap
#   IMAGE=sarcomakit       tags: IMAGE:VARIANT, IMAGE:server-VARIANT, IMAGE:site-VARIANT
#   TOOL=podman|buildah|docker   (the first found)
#   TIMINGS=FILE           append "target seconds bytes" per image (image-test.sh reads it)
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT=${VARIANT:-cpu}
TARGETS=${TARGETS:-cli server}
IMAGE=${IMAGE:-sarcomakit}
DEFAULT_BASE=docker.io/library/python:3.11-slim-bookworm
LOCAL_BASE=localhost/bookworm-min
BASE_IMAGE=${BASE_IMAGE:-$DEFAULT_BASE}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-default}

say() { echo "image: $*" >&2; }

if [ -z "${TOOL:-}" ]; then
  for candidate in podman buildah docker; do
    if command -v "$candidate" >/dev/null 2>&1; then TOOL=$candidate; break; fi
  done
fi
if [ -z "${TOOL:-}" ]; then
  say "no container tool found: install podman (Debian: apt-get install podman buildah runc) or Docker"
  exit 2
fi
# buildah builds; podman or docker inspects and imports (buildah alone has no `import`)
INSPECT=$TOOL
[ "$TOOL" != buildah ] || INSPECT=$(command -v podman || echo buildah)

have_image() { "$INSPECT" image inspect "$1" >/dev/null 2>&1; }

# --- the base image ------------------------------------------------------------------------------------------
if [ "$BASE_IMAGE" = local ]; then
  BASE_IMAGE=$LOCAL_BASE
elif ! have_image "$BASE_IMAGE"; then
  say "pulling $BASE_IMAGE"
  if ! timeout 120 "$INSPECT" pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    if [ "$BASE_IMAGE" != "$DEFAULT_BASE" ]; then say "cannot pull $BASE_IMAGE"; exit 1; fi
    say "no registry reachable: building the base locally from Debian's packages ($LOCAL_BASE)"
    BASE_IMAGE=$LOCAL_BASE
  fi
fi
if [ "$BASE_IMAGE" = "$LOCAL_BASE" ] && ! have_image "$LOCAL_BASE"; then
  TOOL=$INSPECT containers/build-base.sh "$LOCAL_BASE"
fi

# --- torch: a CPU wheel already on this machine saves the download (and PyTorch's index may be unreachable) --
mkdir -p containers/wheels
if [ "$VARIANT" = cpu ] && ! ls containers/wheels/torch-"$TORCH_VERSION"+cpu-cp311-*.whl >/dev/null 2>&1; then
  for dir in ${PIP_FIND_LINKS:-} $(python3 -m pip config get global.find-links 2>/dev/null || true); do
    for wheel in "$dir"/torch-"$TORCH_VERSION"+cpu-cp311-cp311-manylinux*_x86_64.whl; do
      [ -f "$wheel" ] || continue
      say "using the local torch wheel $wheel"
      ln -f "$wheel" containers/wheels/ 2>/dev/null || cp "$wheel" containers/wheels/
      break 2
    done
  done
fi
if [ "$VARIANT" = cpu ] && [ "$TORCH_INDEX_URL" = default ] \
    && ls containers/wheels/torch-"$TORCH_VERSION"+cpu-cp311-*.whl >/dev/null 2>&1; then
  TORCH_INDEX_URL=   # the wheel is in the build context: no index needed
fi

# --- build arguments -----------------------------------------------------------------------------------------
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$REVISION" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  REVISION="$REVISION-dirty"
fi
SOURCE=${SOURCE:-$(git remote get-url origin 2>/dev/null || echo unknown)}
args=(--build-arg "VARIANT=$VARIANT" --build-arg "BASE_IMAGE=$BASE_IMAGE"
      --build-arg "TORCH_VERSION=$TORCH_VERSION" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"
      --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" --build-arg "SOURCE=$SOURCE"
      --network host -f Containerfile)
# a TLS-intercepting proxy: pip in the build needs the host's CA bundle (a build secret, not kept in the image)
CA_BUNDLE=${CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}
[ ! -s "$CA_BUNDLE" ] || args+=(--secret "id=ca,src=$CA_BUNDLE")
case "$TOOL" in
  podman|buildah)
    # crun cannot set rlimits in some sandboxes; runc with lowered limits works there and everywhere else
    if command -v runc >/dev/null 2>&1; then args+=(--runtime runc); fi
    args+=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --layers)
    [ "$TOOL" = podman ] && build=(podman build) || build=(buildah bud)
    ;;
  docker) export DOCKER_BUILDKIT=1; build=(docker build) ;;
  *) say "TOOL must be podman, buildah or docker"; exit 2 ;;
esac

tag_of() {
  case "$1" in
    cli) echo "$IMAGE:$VARIANT" ;;
    server) echo "$IMAGE:server-$VARIANT" ;;
    federated-site) echo "$IMAGE:site-$VARIANT" ;;
    *) say "unknown target $1 (cli, server, federated-site)"; exit 2 ;;
  esac
}

for target in $TARGETS; do
  tag=$(tag_of "$target")
  say "building $tag (target $target, base $BASE_IMAGE, $TOOL)"
  start=$(date +%s)
  "${build[@]}" "${args[@]}" --target "$target" -t "$tag" .
  seconds=$(( $(date +%s) - start ))
  bytes=$("$INSPECT" image inspect --format '{{.Size}}' "$tag")
  say "$tag built in ${seconds}s, $(( bytes / 1000000 )) MB"
  [ -z "${TIMINGS:-}" ] || echo "$target $seconds $bytes $tag" >> "$TIMINGS"
done
