"""Fixtures of the cluster tests: one private three-node RabbitMQ cluster per test module."""

from collections.abc import Iterator

import pytest

from tests.cluster.rabbit_cluster import RabbitCluster, missing_binaries


@pytest.fixture(scope="module")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    """A running three-node RabbitMQ cluster (separate from the system broker), stopped and wiped afterwards.

    Skipped only when the RabbitMQ server scripts or Erlang are not installed on this machine.
    """
    missing = missing_binaries()
    if missing:
        pytest.skip(f"cluster tests need a local RabbitMQ installation; missing: {', '.join(missing)}")
    cluster = RabbitCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
