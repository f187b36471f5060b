#!/usr/bin/env bash
# Smoke tests of the CPU images (make image-test; not part of make test: building takes minutes).
# Builds the cli and server images (containers/image.sh), then runs them as the image's non-root user with no
# network: --help, synth into a mounted folder, plan, one tiny training epoch, predict and predict-io with that
# run, the one-line errors for an unwritable or missing mount, and the server answering /info/ on a published
# port.
# Installs podman, buildah, runc and debootstrap with apt-get when no container tool is found (as root).
#   SKIP_BUILD=1   test the images already built     RECORD=1   append the figures to benchmarks/RESULTS.md
#   IMAGE, TOOL, BASE_IMAGE as for containers/image.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export VARIANT=cpu IMAGE=${IMAGE:-sarcomakit}
PORT=${PORT:-18765}
say() { echo "image-test: $*" >&2; }

# --- tools -----------------------------------------------------------------------------------------------------
if [ -z "${TOOL:-}" ]; then
  for candidate in podman docker; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" info >/dev/null 2>&1; then TOOL=$candidate; break; fi
  done
fi
if [ -z "${TOOL:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "no working podman or docker: installing podman, buildah, runc and debootstrap with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      podman buildah runc debootstrap uidmap fuse-overlayfs netavark aardvark-dns iptables slirp4netns curl >/dev/null \
      || { say "apt-get install failed"; exit 2; }
    TOOL=podman
  else
    say "needs podman or docker; on Debian/Ubuntu, as root: apt-get install podman buildah runc debootstrap"
    exit 2
  fi
fi
command -v curl >/dev/null 2>&1 || { say "needs curl (apt-get install curl)"; exit 2; }
export TOOL
run_flags=(--rm --network none)
global=()
if [ "$TOOL" = podman ]; then
  # crun cannot set rlimits in some sandboxes; runc with lowered limits works there and everywhere else
  if command -v runc >/dev/null 2>&1; then global=(--runtime runc); fi
  run_flags+=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
fi
ctr() { "$TOOL" "${global[@]}" "$@"; }

CLI=$IMAGE:cpu
SERVER=$IMAGE:server-cpu
timings=$(mktemp)
work=$(mktemp -d /tmp/sarcomakit-image-test.XXXXXX)
server_name=sarcomakit-image-test-$$
cleanup() {
  ctr rm -f "$server_name" >/dev/null 2>&1
  if [ "$TOOL" = podman ] && [ "$(id -u)" != 0 ]; then podman unshare rm -rf "$work"; else rm -rf "$work"; fi
  rm -f "$timings"
}
trap cleanup EXIT

# --- build -----------------------------------------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  TARGETS="cli server" TIMINGS=$timings containers/image.sh || { say "FAIL: the image build failed"; exit 1; }
fi

# --- smoke tests -----------------------------------------------------------------------------------------------
# The mounted folder must be writable by the image's user (UID 10001); rootless podman maps that UID, so chown
# inside its user namespace.
mkdir -p "$work/data" "$work/readonly" "$work/datastore"
if [ "$(id -u)" = 0 ]; then
  chown 10001:10001 "$work/data" "$work/datastore"
elif [ "$TOOL" = podman ]; then
  podman unshare chown 10001:10001 "$work/data" "$work/datastore"
else
  chmod 0777 "$work/data" "$work/datastore"
fi
chmod 0755 "$work/readonly"

results=()
failures=0
started=$(date +%s)
# check NAME EXPECTED_STATUS COMMAND...: runs it, keeps its output in $work/NAME.log
check() {
  local name=$1 expected=$2; shift 2
  local t0 status
  t0=$(date +%s)
  "$@" >"$work/$name.log" 2>&1
  status=$?
  local seconds=$(( $(date +%s) - t0 ))
  if [ "$status" = "$expected" ]; then
    results+=("PASS  $name (exit $status, ${seconds}s)")
    return 0
  fi
  results+=("FAIL  $name (exit $status, expected $expected, ${seconds}s)")
  failures=$((failures + 1))
  say "$name failed; its output:"; tail -20 "$work/$name.log" >&2
  return 1
}
# expect NAME CONDITION...: a check on files or output
expect() {
  local name=$1; shift
  if "$@"; then results+=("PASS  $name"); else results+=("FAIL  $name"); failures=$((failures + 1)); fi
}
sk() { ctr run "${run_flags[@]}" -v "$work/data:/work" "$CLI" "$@"; }

check help 0 sk --help
expect "help lists the commands" grep -q "predict" "$work/help.log"
check user 0 ctr run "${run_flags[@]}" --entrypoint id "$CLI" -u
expect "runs as UID 10001" grep -qx 10001 "$work/user.log"
check synth 0 sk synth /work/cohort -n 4 --channels T1 --spacing-scale 3 --sites 1
expect "synth wrote 4 cases" test "$(ls "$work"/data/cohort/images/*.nii.gz 2>/dev/null | wc -l)" -ge 4
check plan 0 sk plan /work/cohort/manifest.csv --memory-mb 256 --patch-size 16,32,32
check train 0 sk train /work/cohort/manifest.csv --plan /work/cohort/plan.json --out /work/run --folds 2 \
  --fold 0 --epochs 1 --iterations 2 --batch-size 1 --workers 0 --device cpu
expect "train wrote a checkpoint" test -s "$work/data/run/fold_0/checkpoint_best.pt"
check predict 0 sk predict /work/run /work/cohort/manifest.csv /work/pred --device cpu
expect "predict wrote 4 masks" test "$(ls "$work"/data/pred/*.nii.gz 2>/dev/null | wc -l)" -eq 4
# the pipeline entry point: images read from a read-only /input, masks and results.json in /output
check predict-io 0 ctr run "${run_flags[@]}" -v "$work/data/cohort/images:/input:ro" -v "$work/data:/work" \
  "$CLI" predict-io /input /work/output --model /work/run --device cpu
expect "predict-io wrote results.json and 4 masks" test -s "$work/data/output/results.json" -a \
  "$(find "$work/data/output" -name '*.mha' 2>/dev/null | wc -l)" -eq 4

# bad input: sarcomakit's one-line error (exit 2), no traceback
one_line_error() { [ "$(grep -c . "$1")" -le 2 ] && ! grep -q Traceback "$1" && grep -qi "error" "$1"; }
check unwritable-mount 2 ctr run "${run_flags[@]}" -v "$work/readonly:/out" "$CLI" synth /out/cohort -n 1
expect "unwritable mount: one-line error" one_line_error "$work/unwritable-mount.log"
check missing-mount 2 ctr run "${run_flags[@]}" "$CLI" predict /work/run /work/cohort/manifest.csv /work/pred
expect "missing mount: one-line error" one_line_error "$work/missing-mount.log"

# the server: published port, datastore volume (network on, as a server needs)
server_flags=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
[ "$TOOL" = podman ] || server_flags=()
start_server() {
  ctr rm -f "$server_name" >/dev/null 2>&1   # a container left by a start that failed
  ctr run -d --name "$server_name" "${server_flags[@]}" "$@" -p "127.0.0.1:$PORT:8000" -v "$work/datastore:/datastore" "$SERVER" \
    2>>"$work/server-start.log"
}
t0=$(date +%s)
# podman's bridge network needs iptables on the host; where it cannot be set up, user-mode networking
# (slirp4netns) publishes the port as well
if server_id=$(start_server) || { [ "$TOOL" = podman ] && server_id=$(start_server --network slirp4netns) \
    && say "podman's default network failed ($(head -1 "$work/server-start.log")); used slirp4netns"; }; then
  info=
  for _ in $(seq 1 90); do
    info=$(curl -sf --max-time 5 "http://127.0.0.1:$PORT/info/") && break
    sleep 2
  done
  ctr logs "$server_id" >"$work/server.log" 2>&1
  if [ -n "$info" ] && echo "$info" | grep -q '"models"'; then
    results+=("PASS  server answers /info/ on port $PORT ($(( $(date +%s) - t0 ))s to first answer)")
  else
    results+=("FAIL  server answers /info/ on port $PORT"); failures=$((failures + 1))
    say "server log:"; tail -20 "$work/server.log" >&2
  fi
  ctr rm -f "$server_name" >/dev/null 2>&1
else
  results+=("FAIL  server starts"); failures=$((failures + 1)); cat "$work/server-start.log" >&2
fi
test_seconds=$(( $(date +%s) - started ))

# --- summary ---------------------------------------------------------------------------------------------------
size_of() { ctr image inspect --format '{{.Size}}' "$1" 2>/dev/null || echo 0; }
cli_bytes=$(size_of "$CLI"); server_bytes=$(size_of "$SERVER")
echo
echo "sarcomakit image smoke tests ($TOOL, $CLI)"
printf '  %s\n' "${results[@]}"
while read -r target seconds bytes tag; do
  echo "  built $tag in ${seconds}s"
done < "$timings"
echo "  image sizes: $CLI $((cli_bytes / 1000000)) MB, $SERVER $((server_bytes / 1000000)) MB (goal <= 2500 MB)"
echo "  smoke tests: ${test_seconds}s; $failures failure(s)"
[ "$cli_bytes" -le 2500000000 ] || { echo "  the CLI image is over 2.5 GB"; failures=$((failures + 1)); }

if [ "${RECORD:-0}" = 1 ] && [ "$failures" = 0 ]; then
  versions=$(ctr run "${run_flags[@]}" --entrypoint python "$CLI" -c "import platform, torch, monai, SimpleITK, numpy; \
print(f'Python {platform.python_version()}; numpy {numpy.__version__}, torch {torch.__version__}, monai {monai.__version__}, SimpleITK {SimpleITK.Version.VersionString()}')")
  tool_version=$("$TOOL" --version | head -1)
  ram=$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)
  {
    echo
    echo "## Container images: build time, size and smoke tests (containers/image-test.sh)"
    echo
    echo "*$(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores, $ram GiB RAM, GPU: none; $tool_version; image: $versions*"
    echo
    echo "| image | build s | size MB |"
    echo "|---|---:|---:|"
    while read -r target seconds bytes tag; do echo "| $tag ($target) | $seconds | $((bytes / 1000000)) |"; done < "$timings"
    [ -s "$timings" ] || echo "| $CLI (cli) | (not rebuilt) | $((cli_bytes / 1000000)) |"
    echo
    echo "Smoke tests, as UID 10001 with --network none (the server with a published port): $test_seconds s in all."
    echo
    echo "| check | result |"
    echo "|---|---|"
    for line in "${results[@]}"; do echo "| ${line:6} | ${line:0:4} |"; done
  } >> benchmarks/RESULTS.md
  say "figures appended to benchmarks/RESULTS.md"
fi
[ "$failures" = 0 ] || { say "$failures failure(s)"; exit 1; }
say "all passed"
