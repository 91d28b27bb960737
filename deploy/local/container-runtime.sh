#!/usr/bin/env bash
# Find a container runtime that can actually run a container, and print how to use it:
#
#   eval "$(deploy/local/container-runtime.sh)"     # sets CONTAINER_RUNTIME (docker|podman), maybe CONTAINERS_CONF
#
# Presence is not enough: a `docker` CLI without a daemon fails `docker info`, and podman with its defaults can fail
# to start a container (crun refusing a cgroup layout, a default nofile limit above the hard limit). So:
#   1. docker, if `docker info` succeeds;
#   2. podman, if it runs a probe container as configured now (the probe's root filesystem is /bin/true and the
#      libraries it needs: no image, no registry);
#   3. podman with our settings: a containers.conf written to $HOOKPOST_CONTAINERS_DIR (default .hookpost/containers)
#      with runc, cgroupfs, file events and default ulimits at this shell's hard limits (nproc at most pid_max), named by CONTAINERS_CONF.
# Exits 1, with the reason on stderr, when none of these can run a container.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${HOOKPOST_CONTAINERS_DIR:-$PWD/.hookpost/containers}"

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  echo "CONTAINER_RUNTIME=docker"
  exit 0
fi
if ! command -v podman >/dev/null 2>&1; then
  echo "no container runtime: 'docker info' fails (no daemon?) and podman is not installed" >&2
  exit 1
fi

probe_rootfs() {  # a root filesystem holding only /bin/true and its shared libraries
  local root="$dir/probe-rootfs" lib
  if [ ! -x "$root/true" ]; then
    mkdir -p "$root"
    cp "$(type -P true)" "$root/true"
    for lib in $(ldd "$(type -P true)" | grep -oE '/[^ ]+'); do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
  fi
  echo "$root"
}

runs() { timeout 60 podman run --rm --network none --rootfs "$(probe_rootfs)" /true >"$dir/probe.log" 2>&1; }

mkdir -p "$dir"
if runs; then
  echo "CONTAINER_RUNTIME=podman"
  [ -n "${CONTAINERS_CONF:-}" ] && echo "CONTAINERS_CONF=$CONTAINERS_CONF"
  exit 0
fi
conf="$dir/containers.conf"
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo "$nproc")
# a limit above this shell's hard limit is refused (EPERM); here nproc above pid_max was refused as well
if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
[ "$nofile" = unlimited ] && nofile=1048576
cat >"$conf" <<TOML
# Written by deploy/local/container-runtime.sh because podman could not run a container with its defaults.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
TOML
export CONTAINERS_CONF="$conf"
if runs; then
  echo "CONTAINER_RUNTIME=podman"
  echo "CONTAINERS_CONF=$conf"
  exit 0
fi
echo "podman cannot run a container, with its defaults or with $conf: $(tail -n 3 "$dir/probe.log")" >&2
exit 1
