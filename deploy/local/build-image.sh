#!/usr/bin/env bash
# `make image`: build hookpost:<version> from deploy/Dockerfile with docker or podman, whichever can run a container.
#
#   PYTHON_IMAGE   base of both stages (default python:3.11-slim; when that can neither be found nor pulled,
#                  a local Debian base made by deploy/local/debian-base.sh, reused once made)
#   EXTRA_CA       PEM file(s) of extra CA certificates (a TLS-intercepting proxy) for pip in the build stage only,
#                  passed as the build secret `extra-ca`. Default: Debian's local ones, /usr/local/share/ca-certificates/*.crt.
#                  EXTRA_CA=none passes nothing.
#   IMAGE          the tag (default hookpost:<version from setup.cfg>)
# Prints the tag on the last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
runtime_env="$(deploy/local/container-runtime.sh)"
eval "$runtime_env"
export CONTAINER_RUNTIME
[ -n "${CONTAINERS_CONF:-}" ] && export CONTAINERS_CONF
rt="$CONTAINER_RUNTIME"
version="$(sed -n 's/^version *= *//p' setup.cfg)"
image="${IMAGE:-hookpost:$version}"

secret=()
ca_files=()
if [ "${EXTRA_CA:-}" != none ]; then
  if [ -n "${EXTRA_CA:-}" ]; then
    read -r -a ca_files <<<"$EXTRA_CA"
  else
    shopt -s nullglob
    ca_files=(/usr/local/share/ca-certificates/*.crt)
    shopt -u nullglob
  fi
fi
for f in "${ca_files[@]}"; do
  [ -r "$f" ] || { echo "EXTRA_CA: cannot read $f (PEM files, separated by spaces; EXTRA_CA=none for none)" >&2; exit 2; }
done
if [ "${#ca_files[@]}" -gt 0 ]; then
  bundle="$(mktemp "${TMPDIR:-/tmp}/hookpost-extra-ca.XXXXXX")"
  trap 'rm -f "$bundle"' EXIT
  cat "${ca_files[@]}" >"$bundle"
  secret=(--secret "id=extra-ca,src=$bundle")
fi

base="${PYTHON_IMAGE:-}"
if [ -z "$base" ]; then
  base="python:3.11-slim"
  if ! "$rt" image inspect "$base" >/dev/null 2>&1 && ! timeout 60 "$rt" pull -q "$base" >/dev/null 2>&1; then
    echo "$base cannot be pulled; using a local Debian base instead" >&2
    base="$(deploy/local/debian-base.sh | tail -n 1)"
  fi
fi

echo "building $image with $rt (PYTHON_IMAGE=$base${secret:+, extra CA certificates for the build stage})" >&2
DOCKER_BUILDKIT=1 "$rt" build -f deploy/Dockerfile --build-arg "PYTHON_IMAGE=$base" \
    --label "org.opencontainers.image.base.name=$base" "${secret[@]}" -t "$image" . >&2
size="$("$rt" image inspect --format '{{.Size}}' "$image")"
echo "$image: $((size / 1000000)) MB" >&2
echo "$image"
