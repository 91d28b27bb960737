"""A private three-node RabbitMQ cluster on this machine, for failover tests.

The nodes are separate from the machine's own broker (``rabbit@<host>`` on 5672): each has its own node name
(unique per run, so concurrent test runs do not collide in epmd), its own AMQP and Erlang distribution ports
(free ports in 20000-30000, below the kernel's ephemeral range), its own data, log, config and plugin files,
and the whole cluster has a private ``HOME`` with its own Erlang cookie. Everything lives in one temporary
directory that :meth:`RabbitCluster.stop` removes.

Pitfalls taken from the project's reference recipe (RabbitMQ 3.10 on Debian):

- use the real scripts in ``/usr/lib/rabbitmq/bin``, not the ``/usr/sbin`` wrappers, which ``su`` to the
  ``rabbitmq`` user and so read the system node's cookie;
- point ``RABBITMQ_CONFIG_FILE`` / ``RABBITMQ_CONF_ENV_FILE`` / ``RABBITMQ_ENABLED_PLUGINS_FILE`` at our own
  (empty) files so nothing from ``/etc/rabbitmq`` is picked up;
- keep Erlang distribution on loopback (``inet_dist_use_interface``);
- start the nodes concurrently, then join the second and third to the first
  (``stop_app; reset; join_cluster; start_app``);
- remove a stale pid file before restarting a node killed with ``kill -9`` (``rabbitmqctl wait`` would read
  the dead PID).

Example::

    with RabbitCluster() as cluster:          # starts and clusters three nodes, stops and wipes them on exit
        print(cluster.urls)                   # ['amqp://guest:guest@127.0.0.1:2xxxx/%2F', ...]
        leader = cluster.leader_of("hookpost.deliver")
        cluster.kill9(leader)
        cluster.start_node(leader)

    with RabbitNode() as node:                # one private node: a broker the tests may restart or alarm
        node.restart_app()                    # rabbitmqctl stop_app + start_app, on this node only
        node.channels()                       # [{"number": 2, "unacked": 37, "prefetch": 100}, ...]
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

SBIN = Path(os.environ.get("HOOKPOST_TEST_RABBITMQ_SBIN", "/usr/lib/rabbitmq/bin"))
REQUIRED = ("rabbitmq-server", "rabbitmqctl")


class ClusterError(RuntimeError):
    """The cluster could not be started, clustered or queried; the message names the node and its log."""


def missing_binaries(sbin: Path = SBIN) -> list[str]:
    """Return what is missing to start a cluster here (empty when the RabbitMQ and Erlang binaries exist)."""
    missing = [str(sbin / name) for name in REQUIRED if not (sbin / name).is_file()]
    if shutil.which("erl") is None:
        missing.append("erl (Erlang)")
    return missing


def free_port(taken: set[int], low: int = 20000, high: int = 30000) -> int:
    """Return a port in ``[low, high)`` that can be bound on 127.0.0.1 now and is not in ``taken``.

    The range lies below Linux's ephemeral range (32768+), so outgoing connections do not grab it meanwhile.
    """
    for _ in range(500):
        port = random.randrange(low, high)
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise ClusterError(f"no free port in {low}-{high}")


@dataclass
class Node:
    """One RabbitMQ node of the cluster: its names, ports, directory and server process."""

    name: str
    host: str
    amqp_port: int
    dist_port: int
    dir: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def nodename(self) -> str:
        """Erlang node name, e.g. ``hp3f9a1ca@localhost``."""
        return f"{self.name}@{self.host}"

    @property
    def url(self) -> str:
        """AMQP URL of this node (guest/guest, default vhost)."""
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def pid_file(self) -> Path:
        """File in which the node writes the PID of its ``beam.smp``."""
        return self.dir / "pid"

    def pid(self) -> int | None:
        """Return the PID of the node's Erlang VM if it is running, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def rss_kb(self) -> int | None:
        """Return the resident memory of the node's VM in KiB (None if it is not running)."""
        pid = self.pid()
        if pid is None:
            return None
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None


class RabbitCluster:
    """Start, cluster, fault-inject and tear down ``size`` private RabbitMQ nodes on 127.0.0.1.

    :param base: directory for everything (a new temporary one if None); removed by :meth:`stop`.
    :param size: number of nodes (3 for quorum queues that survive one node loss).
    :param host: host part of the node names; ``localhost`` works on Debian, else try ``hostname -s``.
    :param sbin: directory of the real ``rabbitmq-server`` / ``rabbitmqctl`` scripts.
    """

    def __init__(self, base: Path | None = None, *, size: int = 3, host: str = "localhost",
                 sbin: Path = SBIN) -> None:
        self.base = Path(base) if base is not None else Path(tempfile.mkdtemp(prefix="hookpost-rmq-cluster-"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.sbin = sbin
        self.host = host
        self.home = self.base / "home"
        tag = secrets.token_hex(3)
        taken: set[int] = set()
        self.nodes: list[Node] = []
        for letter in "abcdefghij"[:size]:
            name = f"hp{tag}{letter}"
            self.nodes.append(Node(name=name, host=host, amqp_port=free_port(taken), dist_port=free_port(taken),
                                   dir=self.base / name))
        self._stopped = False
        atexit.register(self.stop)

    # ---- context manager -------------------------------------------------------------------------------------
    def __enter__(self) -> RabbitCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---- addresses ------------------------------------------------------------------------------------------
    @property
    def urls(self) -> list[str]:
        """AMQP URLs of the nodes, first node first."""
        return [n.url for n in self.nodes]

    def node(self, name: str) -> Node:
        """Return the node called ``name`` (short name, node name ``x@host``, or AMQP URL)."""
        for n in self.nodes:
            if name in (n.name, n.nodename, n.url):
                return n
        raise KeyError(name)

    def running(self) -> list[Node]:
        """Nodes whose Erlang VM is alive now."""
        return [n for n in self.nodes if n.pid() is not None]

    # ---- environment ----------------------------------------------------------------------------------------
    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_", "HOOKPOST_")) and k != "HOME"}
        env["HOME"] = str(self.home)               # server and CLI read $HOME/.erlang.cookie
        env.setdefault("LC_ALL", "C.UTF-8")        # the Elixir CLI complains about a non-UTF-8 locale
        env["RABBITMQ_CONF_ENV_FILE"] = str(self.base / "cli-env.conf")   # not /etc/rabbitmq/rabbitmq-env.conf
        return env

    def _ensure_files(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text("".join(random.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(32)))
            cookie.chmod(0o400)                    # Erlang refuses a cookie readable by others
        (self.base / "cli-env.conf").touch()
        for n in self.nodes:
            (n.dir / "mnesia").mkdir(parents=True, exist_ok=True)
            (n.dir / "log").mkdir(parents=True, exist_ok=True)
            plugins = n.dir / "enabled_plugins"
            if not plugins.exists():
                plugins.write_text("[].\n")        # no management plugin: fewer ports, faster start
            for f in ("rabbitmq.conf", "rabbitmq-env.conf"):
                (n.dir / f).touch()

    def _node_env(self, n: Node) -> dict[str, str]:
        env = self._base_env()
        env.update({
            "RABBITMQ_NODENAME": n.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(n.amqp_port),
            "RABBITMQ_DIST_PORT": str(n.dist_port),
            "RABBITMQ_MNESIA_BASE": str(n.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(n.dir / "log"),
            "RABBITMQ_PID_FILE": str(n.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(n.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(n.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(n.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(n.dir / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_CRASH_DUMP": str(n.dir / "erl_crash.dump"),
        })
        return env

    # ---- CLI ------------------------------------------------------------------------------------------------
    def ctl(self, node: Node | str, *args: str, timeout: float = 60.0, tool: str = "rabbitmqctl") -> str:
        """Run ``rabbitmqctl -n NODE -q ARGS`` (or ``tool``, e.g. ``rabbitmq-queues``); return its stdout.

        Raises :class:`ClusterError` with the command's output if it fails or exceeds ``timeout`` seconds.
        """
        n = node if isinstance(node, Node) else self.node(node)
        cmd = [str(self.sbin / tool), "-n", n.nodename, "-q", *args]
        try:
            res = subprocess.run(cmd, env=self._base_env(), capture_output=True, text=True, timeout=timeout,
                                 check=False)
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{' '.join(cmd[1:])} timed out after {timeout:g}s") from exc
        if res.returncode != 0:
            raise ClusterError(f"{tool} {' '.join(cmd[1:])} failed ({res.returncode}): "
                               f"{(res.stderr or res.stdout).strip()[:800]}")
        return res.stdout

    def _any_running(self, exclude: Node | None = None) -> Node:
        for n in self.nodes:
            if n is not exclude and n.pid() is not None:
                return n
        raise ClusterError("no cluster node is running")

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> None:
        """Start every node concurrently, join them into one cluster and wait until all are running in it."""
        self._ensure_files()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda n: self.start_node(n, timeout=timeout), self.nodes))
        first = self.nodes[0]
        for n in self.nodes[1:]:
            if first.nodename in self.running_nodes(n):
                continue                            # never reset a node that is already clustered (drops data)
            self.ctl(n, "stop_app", timeout=timeout)
            self.ctl(n, "reset", timeout=timeout)
            self.ctl(n, "join_cluster", first.nodename, timeout=timeout)
            self.ctl(n, "start_app", timeout=timeout)
        self.wait_clustered(timeout=timeout)

    def start_node(self, node: Node | str, timeout: float = 120.0) -> float:
        """(Re)start one node, keeping its data; wait until its ``rabbit`` app runs; return the seconds taken."""
        n = node if isinstance(node, Node) else self.node(node)
        if n.pid() is not None:
            return 0.0
        self._ensure_files()
        if n.process is not None and n.process.poll() is None:
            n.process.kill()                        # the wrapper script of a killed VM: reap it
            n.process.wait(10)
        n.pid_file.unlink(missing_ok=True)          # stale after kill -9
        t0 = time.monotonic()
        with open(n.dir / "stdout.log", "ab") as out:
            n.process = subprocess.Popen([str(self.sbin / "rabbitmq-server")], env=self._node_env(n), cwd=n.dir,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            self.ctl(n, "wait", "--timeout", str(int(timeout)), str(n.pid_file), timeout=timeout + 10)
        except ClusterError as exc:
            raise ClusterError(f"{exc}\n--- {n.dir / 'stdout.log'} ---\n{self._tail(n)}") from exc
        return time.monotonic() - t0

    def _tail(self, n: Node, lines: int = 30) -> str:
        try:
            return "\n".join((n.dir / "stdout.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def running_nodes(self, via: Node | str | None = None) -> list[str]:
        """Return the node names the cluster reports as running (asked through ``via`` or any live node)."""
        n = self._any_running() if via is None else (via if isinstance(via, Node) else self.node(via))
        status = json.loads(self.ctl(n, "cluster_status", "--formatter", "json"))
        return sorted(status.get("running_nodes", []))

    def wait_clustered(self, timeout: float = 60.0, expected: list[Node] | None = None) -> None:
        """Wait until every node in ``expected`` (default: all) is running in one cluster."""
        want = sorted(n.nodename for n in (expected or self.nodes))
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.running_nodes()
                if all(w in last for w in want):
                    return
            except ClusterError as exc:
                last = exc
            time.sleep(0.5)
        raise ClusterError(f"cluster not formed within {timeout:g}s: want {want}, last {last}")

    def kill9(self, node: Node | str) -> float:
        """``kill -9`` the node's Erlang VM and return ``time.monotonic()`` at the kill; wait until it is gone."""
        n = node if isinstance(node, Node) else self.node(node)
        pid = n.pid()
        if pid is None:
            raise ClusterError(f"{n.nodename} is not running")
        t = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        deadline = t + 10
        while time.monotonic() < deadline and n.pid() is not None:
            time.sleep(0.01)
        if n.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                n.process.wait(5)                   # the wrapper script exits when its VM dies
        return t

    # ---- queues ---------------------------------------------------------------------------------------------
    def queue_info(self, queue: str, via: Node | str | None = None) -> dict[str, Any] | None:
        """Return ``name, type, leader, members, online, messages`` of ``queue`` (None if it does not exist)."""
        n = self._any_running() if via is None else (via if isinstance(via, Node) else self.node(via))
        out = self.ctl(n, "list_queues", "name", "type", "leader", "members", "online", "messages",
                       "--formatter", "json")
        for q in json.loads(out or "[]"):
            if q.get("name") == queue:
                return dict(q)
        return None

    def leader_of(self, queue: str, via: Node | str | None = None) -> Node:
        """Return the node that leads quorum queue ``queue`` now."""
        info = self.queue_info(queue, via)
        if not info or not info.get("leader"):
            raise ClusterError(f"no leader known for queue {queue!r}: {info}")
        return self.node(str(info["leader"]))

    def quorum_status(self, queue: str, via: Node | str | None = None) -> str:
        """Return ``rabbitmq-queues quorum_status QUEUE`` (Raft state of every member) as text."""
        n = self._any_running() if via is None else (via if isinstance(via, Node) else self.node(via))
        return self.ctl(n, "quorum_status", queue, tool="rabbitmq-queues")

    # ---- teardown -------------------------------------------------------------------------------------------
    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node (``rabbitmqctl stop``, ``kill -9`` as fallback) and remove the cluster's directory.

        Idempotent; also registered with :mod:`atexit` so an interrupted run does not leave nodes behind.
        """
        if self._stopped:
            return
        self._stopped = True

        def stop_one(n: Node) -> None:
            pid = n.pid()
            if pid is not None:
                try:
                    self.ctl(n, "stop", str(n.pid_file), timeout=timeout)
                except ClusterError:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if n.process is not None:
                try:
                    n.process.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(n.process.pid, signal.SIGKILL)
                    n.process.wait(5)

        try:
            try:
                with ThreadPoolExecutor(len(self.nodes)) as pool:
                    list(pool.map(stop_one, self.nodes))
            except RuntimeError:                    # at interpreter exit no new threads: one by one
                for n in self.nodes:
                    stop_one(n)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
            atexit.unregister(self.stop)


class RabbitNode(RabbitCluster):
    """One private RabbitMQ node (a cluster of one) that a test may restart, alarm or fill as it likes.

    Same isolation as :class:`RabbitCluster`: its own node name, ports, data directory and Erlang cookie; the
    machine's shared broker is never touched. :meth:`stop` stops the node and wipes its directory.
    """

    def __init__(self, base: Path | None = None, *, host: str = "localhost", sbin: Path = SBIN) -> None:
        super().__init__(base, size=1, host=host, sbin=sbin)

    @property
    def node(self) -> Node:
        """The one node."""
        return self.nodes[0]

    @property
    def url(self) -> str:
        """AMQP URL of the node (guest/guest, default vhost)."""
        return self.node.url

    def restart_app(self, timeout: float = 120.0) -> float:
        """Restart the RabbitMQ application on the node (``rabbitmqctl stop_app``, ``start_app``,
        ``await_startup``), as an operator's broker restart does: every connection drops, durable queues and
        persistent messages stay. Return the seconds it took."""
        t0 = time.monotonic()
        self.ctl(self.node, "stop_app", timeout=timeout)
        self.ctl(self.node, "start_app", timeout=timeout)
        self.ctl(self.node, "await_startup", "--timeout", str(int(timeout)), timeout=timeout + 10)
        return time.monotonic() - t0

    def channels(self) -> list[dict[str, int]]:
        """Return ``number``, ``unacked`` (messages delivered and not yet acked) and ``prefetch`` of every open
        channel, read from the channel processes: current, unlike ``list_queues``' counts of a quorum queue, which
        lag by up to the 5 s statistics interval (use a passive declare for a queue's ready messages)."""
        out = self.ctl(self.node, "list_channels", "number", "messages_unacknowledged", "prefetch_count",
                       "--formatter", "json")
        return [{"number": int(c.get("number") or 0), "unacked": int(c.get("messages_unacknowledged") or 0),
                 "prefetch": int(c.get("prefetch_count") or 0)} for c in json.loads(out or "[]")]
