#!/usr/bin/env bash
# Make a Python base image from Debian's packages, for building deploy/Dockerfile where no image registry can be
# reached (PYTHON_IMAGE=localhost/hookpost-python:bookworm). Reused when it is already there; about 40 s otherwise.
#
#   CONTAINER_RUNTIME=podman deploy/local/debian-base.sh        # prints the image name
#
# debootstrap (as root) fetches Debian's packages from the mirror apt already uses (DEBIAN_MIRROR to change it);
# the root filesystem is imported with `podman import` / `docker import`. No CA certificate of this machine is
# copied in: a build behind a TLS-intercepting proxy passes them to the build stage only (see docs/deployment.md).
set -euo pipefail
runtime="${CONTAINER_RUNTIME:-podman}"
image="${BASE_IMAGE:-localhost/hookpost-python:bookworm}"
suite="${DEBIAN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if "$runtime" image inspect "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is needed to make $image (apt-get install debootstrap)" >&2; exit 1; }
rootfs="$(mktemp -d "${TMPDIR:-/tmp}/hookpost-rootfs.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT
echo "making $image from Debian $suite ($mirror) ..." >&2
# python-is-python3: the Dockerfile and the health checks call `python`
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    "$suite" "$rootfs" "$mirror" >&2
(cd "$rootfs" && rm -rf var/cache/apt/archives/*.deb var/cache/apt/*.bin var/lib/apt/lists/* usr/share/doc/* \
    usr/share/man/* usr/share/locale/* etc/resolv.conf)
tar -C "$rootfs" -c . | "$runtime" import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$image" >&2
echo "$image"
