#!/bin/sh
# Builds a minimal Debian bookworm base image from Debian's own packages (debootstrap), for machines that
# reach a Debian mirror but no container registry. The Containerfile installs Python 3.11 on top of it.
#   containers/build-base.sh [TAG]        (root; TOOL=podman|docker, DEBIAN_MIRROR=... to override)
set -eu
TAG=${1:-localhost/bookworm-min}
TOOL=${TOOL:-$(command -v podman || command -v docker || true)}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

[ -n "$TOOL" ] || { echo "build-base: needs podman or docker (apt-get install podman runc)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "build-base: needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "build-base: debootstrap needs root" >&2; exit 2; }

dir=$(mktemp -d /var/tmp/bookworm-min.XXXXXX)
trap 'rm -rf "$dir"' EXIT
echo "build-base: debootstrap --variant=minbase bookworm from $MIRROR"
debootstrap --variant=minbase bookworm "$dir" "$MIRROR" >"$dir.log" 2>&1 || {
  tail -20 "$dir.log" >&2; echo "build-base: debootstrap failed (log: $dir.log)" >&2; exit 1; }
rm -f "$dir.log"
# updates and security fixes, as the official slim images carry; no package caches or lists in the image
cat >"$dir/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
SOURCES
rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/var/log/*.log
tar -C "$dir" --numeric-owner -c . | "$TOOL" import --change 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
echo "build-base: $TAG ready"
