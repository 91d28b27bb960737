"""Fixtures of the fault-injection tests: a dedicated store, TCP proxies for the broker and the store,
``hookpost dispatcher`` subprocesses that are stopped after each test, and a private one-node RabbitMQ for the
tests that restart the broker or read its unacked counts (never the machine's shared broker).

Teardown order matters and follows the dependencies: dispatchers stop first, then the proxies close, then
``settings_factory`` deletes each test's topology and database, then the dedicated store stops.
"""

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from hookpost.common.settings import Settings
from hookpost.store.localserver import LocalMongo
from tests.cluster.rabbit_cluster import RabbitNode, missing_binaries
from tests.conftest import RABBIT_URL
from tests.faults.procs import DispatcherProcess
from tests.faults.proxy import TcpProxy

SettingsMaker = Callable[..., Settings]


@pytest.fixture(scope="module")
def store_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMongo]:
    """A dedicated nx-27017 for this module's tests, so store outages disturb nobody else."""
    server = LocalMongo(Path(tmp_path_factory.mktemp("faults-mongo")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A private one-node RabbitMQ (own node name, ports, data and Erlang cookie), started on first use and stopped
    and wiped at the end of the session. Tests may restart it; each test still uses its own topology prefix.

    Skipped only when the RabbitMQ server scripts or Erlang are not installed on this machine.
    """
    missing = missing_binaries()
    if missing:
        pytest.skip(f"needs a local RabbitMQ installation for a private node; missing: {', '.join(missing)}")
    node = RabbitNode()
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture
def fault_settings(store_server: LocalMongo, settings_factory: SettingsMaker) -> SettingsMaker:
    """Make test settings (unique prefix and database, cleaned up) on the dedicated store, direct URLs."""
    def make(**overrides: object) -> Settings:
        return settings_factory(mongodb_url=store_server.url, **overrides)
    return make


@pytest.fixture
def broker_proxy(fault_settings: SettingsMaker) -> Iterator[TcpProxy]:
    """A :class:`TcpProxy` in front of the test broker (``HOOKPOST_TEST_RABBITMQ_URL`` or 127.0.0.1:5672)."""
    parts = urlsplit(RABBIT_URL)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672, name="broker") as proxy:
        yield proxy


@pytest.fixture
def store_proxy(store_server: LocalMongo, fault_settings: SettingsMaker) -> Iterator[TcpProxy]:
    """A :class:`TcpProxy` in front of the dedicated store."""
    with TcpProxy("127.0.0.1", store_server.port, name="store") as proxy:
        yield proxy


@pytest.fixture
def dispatchers(tmp_path: Path, broker_proxy: TcpProxy,
                store_proxy: TcpProxy) -> Iterator[Callable[..., DispatcherProcess]]:
    """Start ``hookpost dispatcher`` subprocesses: ``dispatchers(env, name="d1")``; all are stopped afterwards.

    Logs go to ``<tmp_path>/<name>.log`` (printed at teardown when a test fails to stop one cleanly).
    """
    started: list[DispatcherProcess] = []

    def start(env: Mapping[str, str], name: str = "dispatcher") -> DispatcherProcess:
        proc = DispatcherProcess(env, tmp_path / f"{name}.log", name=name)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        code = proc.stop()
        if code not in (0, None, -9):
            print(f"{proc.name} exited with {code} at teardown; log {proc.log_path}")


@pytest.fixture
def delivery_log() -> Iterator[list[logging.LogRecord]]:
    """The INFO+ records of ``hookpost.delivery`` from an in-process worker, INFO ones kept out of pytest's report.

    (Every attempt logs an INFO line; on a failure pytest would print hundreds. Tests search this list instead.)
    """
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("hookpost.delivery")

    def keep(record: logging.LogRecord) -> bool:
        records.append(record)
        return record.levelno >= logging.WARNING  # INFO stops here; warnings still reach pytest's report

    old_level = logger.level
    logger.addFilter(keep)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeFilter(keep)
        logger.setLevel(old_level)
