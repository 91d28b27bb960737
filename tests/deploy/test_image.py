"""The built image: an unprivileged user, a read-only root filesystem, a working CLI, a reported size, and no
build-time CA certificate left in it."""

import re
from pathlib import Path

from tests.deploy.containers import Runtime, report

LOCAL_BASE = "localhost/hookpost-python:bookworm"
MAX_MB_ON_LOCAL_BASE = 300


def test_runs_as_uid_10001_read_only_and_the_cli_works(runtime: Runtime, image: str):
    ro = ["run", "--rm", "--read-only", "--tmpfs", "/tmp", "--network", "none"]
    proc = runtime(*ro, "--entrypoint", "id", image)
    assert proc.stdout.split()[:2] == ["uid=10001(hookpost)", "gid=10001(hookpost)"], proc.stdout
    proc = runtime(*ro, image, "--help")
    assert "Usage: hookpost" in proc.stdout
    for command in ("dispatcher", "janitor", "server", "topology", "events", "webhooks"):
        assert re.search(rf"^\s+{command}\s", proc.stdout, re.M), f"{command} missing from hookpost --help"
    # the root filesystem is read-only indeed, /tmp is writable
    proc = runtime(*ro, "--entrypoint", "python", image, "-c",
                   "import pathlib, tempfile\n"
                   "tempfile.NamedTemporaryFile().close()\n"
                   "try:\n    pathlib.Path('/home/hookpost/x').write_text('x')\nexcept OSError as e:\n"
                   "    print('refused', e.errno)", check=True)
    assert proc.stdout.strip() == "refused 30", proc.stdout  # EROFS
    # a bad argument: one plain line and a non-zero exit, no traceback
    proc = runtime(*ro, image, "events", "list", "--status", "nonsense", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr


def test_image_size_is_reported(runtime: Runtime, image: str, pytestconfig):
    info = runtime.inspect(image)
    size_mb = info["Size"] / 1e6
    labels = info.get("Config", {}).get("Labels") or {}
    base = labels.get("org.opencontainers.image.base.name")  # set by deploy/local/build-image.sh
    report(pytestconfig, f"container tests: image {image} is {size_mb:.0f} MB (base {base})")
    assert base, "deploy/local/build-image.sh labels the image with its base"
    if base == LOCAL_BASE:
        assert size_mb <= MAX_MB_ON_LOCAL_BASE, f"{size_mb:.0f} MB > {MAX_MB_ON_LOCAL_BASE} MB"


def test_build_stage_ca_certificates_are_not_in_the_runtime_image(runtime: Runtime, image: str):
    local = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    proc = runtime("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                   "cat /etc/ssl/certs/ca-certificates.crt; ls /usr/local/share/ca-certificates/")
    bundle = proc.stdout
    for crt in local:  # the build passed these to pip as the secret `extra-ca`
        body = "".join(line for line in crt.read_text().splitlines() if line and not line.startswith("-----"))
        assert body[64:128] not in bundle.replace("\n", ""), f"{crt.name} reached the runtime image"
        assert crt.name not in bundle
