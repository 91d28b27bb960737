"""Fixtures of the container tests: the runtime (docker or podman, whichever can run a container), the image
(built once per test session by ``deploy/local/build-image.sh``, the same script as ``make image``) and the
containers a test starts (removed afterwards). Without a runtime that can run a container, the tests that need
one are skipped with the reason; the schema and rules tests need none."""

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from hookpost.common.settings import Settings
from tests.conftest import FAST_DELAYS
from tests.deploy.containers import ROOT, Containers, NoRuntime, Runtime, report


@pytest.fixture(scope="package", autouse=True)
def wall_time(pytestconfig: pytest.Config) -> Iterator[None]:
    """Report the wall time of the tests in tests/deploy (what they add to a CI run)."""
    started = time.monotonic()
    yield
    report(pytestconfig, f"tests/deploy took {time.monotonic() - started:.0f} s of wall time")


@pytest.fixture(scope="session")
def runtime() -> Runtime:
    """The container runtime, or a skip saying why there is none (a failure under
    HOOKPOST_TEST_CONTAINERS=required, as in CI)."""
    try:
        return Runtime.find()
    except NoRuntime as exc:
        if os.environ.get("HOOKPOST_TEST_CONTAINERS") == "required":  # set by .ci/run
            pytest.fail(f"no container runtime can run a container here: {exc}")
        pytest.skip(f"no container runtime can run a container here: {exc}")


@pytest.fixture(scope="session")
def image(runtime: Runtime, pytestconfig: pytest.Config) -> str:
    """The image tag, built for this session (HOOKPOST_TEST_IMAGE names an existing image to use instead)."""
    if os.environ.get("HOOKPOST_TEST_IMAGE"):
        return os.environ["HOOKPOST_TEST_IMAGE"]
    started = time.monotonic()
    env = {**runtime.env, "IMAGE": "hookpost:test"}
    proc = subprocess.run(["bash", str(ROOT / "deploy/local/build-image.sh")], capture_output=True, text=True,
                          timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, f"the image build failed:\n{proc.stderr[-4000:]}"
    tag = proc.stdout.strip().splitlines()[-1]
    report(pytestconfig, f"container tests: image {tag} built in {time.monotonic() - started:.0f} s")
    return tag


@pytest.fixture
def containers(runtime: Runtime, image: str) -> Iterator[Containers]:
    """Start containers of the image; all are removed after the test."""
    made = Containers(runtime, image)
    yield made
    made.remove_all()


def container_env(settings: Settings, **extra: object) -> dict[str, str]:
    """The ``HOOKPOST_*`` environment of a container that works on ``settings``' broker topology and database
    (host network: the broker and the store answer on 127.0.0.1), with a short shutdown grace."""
    env = {
        "HOOKPOST_RABBITMQ_URL": settings.rabbitmq_url, "HOOKPOST_MONGODB_URL": settings.mongodb_url,
        "HOOKPOST_MONGODB_DB": settings.mongodb_db, "HOOKPOST_PREFIX": settings.prefix,
        "HOOKPOST_QUEUE_TYPE": settings.queue_type, "HOOKPOST_ALLOW_PRIVATE_TARGETS": "true",
        "HOOKPOST_RETRY_DELAYS": FAST_DELAYS, "HOOKPOST_HTTP_TIMEOUT": "5s", "HOOKPOST_WEBHOOK_CACHE_TTL": "200ms",
        "HOOKPOST_OPS_HOST": "127.0.0.1", "HOOKPOST_SHUTDOWN_GRACE": "5s", "HOOKPOST_LOG_FORMAT": "json",
    }
    env.update({f"HOOKPOST_{k.upper()}": str(v) for k, v in extra.items()})
    return env
