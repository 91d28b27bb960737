"""Processes of the benchmark: CPU and RSS sampling with psutil, the dispatcher and receiver subprocesses.

Example::

    cpu = CpuMeter({"dispatcher": disp.pid, "store": mongo.pid, "broker": broker_pid()})
    before = cpu.snapshot()
    ...                                     # the work
    used = cpu.snapshot() - before          # CPU seconds per process, wall time, other load
"""

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from hookpost.common.process import stop_process
from hookpost.common.settings import settings_env
from hookpost.store.localserver import free_port
from tests.metrics_text import Samples, parse_metrics

REPO = Path(__file__).resolve().parent.parent


def broker_pid() -> int | None:
    """Return the pid of the local RabbitMQ node (``beam.smp``), or None if none runs."""
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "beam.smp":
            return int(proc.pid)
    return None


def venv_script(name: str) -> str:
    """Return the console script ``name`` beside the running interpreter (the project's virtualenv)."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else name


def _busy(times: Any) -> float:
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


@dataclass
class CpuUsage:
    """CPU seconds used per named process over a window, the wall time, and the machine's total busy CPU."""

    seconds: dict[str, float]
    wall: float
    machine_busy: float

    @property
    def others(self) -> float:
        """CPU seconds used by processes not measured here (other engineers' tests, the OS)."""
        return max(0.0, self.machine_busy - sum(self.seconds.values()))

    def share(self) -> dict[str, float]:
        """Return each process's CPU as a fraction of the machine's capacity over the window."""
        capacity = self.wall * (psutil.cpu_count() or 1)
        out = {k: v / capacity for k, v in self.seconds.items()}
        out["others"] = self.others / capacity
        return out


@dataclass
class CpuSnapshot:
    """Cumulative CPU seconds per process at one moment."""

    seconds: dict[str, float]
    at: float
    machine_busy: float

    def __sub__(self, earlier: "CpuSnapshot") -> CpuUsage:
        return CpuUsage({k: v - earlier.seconds.get(k, 0.0) for k, v in self.seconds.items()},
                        self.at - earlier.at, self.machine_busy - earlier.machine_busy)


@dataclass
class CpuMeter:
    """Reads user+system CPU seconds of named processes (a process that exited keeps its last value)."""

    pids: Mapping[str, int | None]
    _procs: dict[str, psutil.Process] = field(default_factory=dict)
    _last: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, pid in self.pids.items():
            if pid is not None:
                with contextlib.suppress(psutil.Error):
                    self._procs[name] = psutil.Process(pid)

    def snapshot(self) -> CpuSnapshot:
        """Return the processes' cumulative CPU seconds now."""
        out = {}
        for name, proc in self._procs.items():
            try:
                t = proc.cpu_times()
                self._last[name] = t.user + t.system
            except psutil.Error:
                pass
            out[name] = self._last.get(name, 0.0)
        return CpuSnapshot(out, time.monotonic(), _busy(psutil.cpu_times()))


class RssSampler:
    """Samples a process's resident memory every ``interval`` seconds in a thread: ``(seconds, bytes)`` pairs."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic() - self._t0, int(self.proc.memory_info().rss)))
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def start(self) -> "RssSampler":
        """Start sampling."""
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, int]]:
        """Stop sampling and return the samples."""
        self._stop.set()
        self._thread.join(5)
        return self.samples


async def http_get(url: str, timeout: float = 5.0) -> tuple[int | None, str]:
    """GET ``url``; return its status and text (``(None, "")`` if nothing answers)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
                session.get(url) as resp:
            return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None, ""


class Subprocess:
    """A child process in its own session, with its output in a log file; stopped with SIGTERM then SIGKILL."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = args
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id (the process must have been started)."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "Subprocess":
        """Start the process."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; return the exit code."""
        if self.proc is None:
            return None
        return stop_process(self.proc, timeout)

    def log_tail(self, chars: int = 2000) -> str:
        """Return the end of the process's log."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def base_env() -> dict[str, str]:
    """Return this process's environment without any ``HOOKPOST_*`` variable, the virtualenv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


class Dispatcher(Subprocess):
    """``hookpost dispatcher`` with the given ``HOOKPOST_*`` settings and its ops server on a free port."""

    def __init__(self, settings: Mapping[str, str], log_path: Path) -> None:
        self.ops_port = free_port()
        env = base_env()
        env.update(settings_env(settings))
        env.update(HOOKPOST_OPS_PORT=str(self.ops_port), HOOKPOST_OPS_HOST="127.0.0.1",
                   HOOKPOST_LOG_FORMAT="json")
        env.setdefault("HOOKPOST_LOG_LEVEL", "WARNING")
        super().__init__([venv_script("hookpost"), "dispatcher"], env, log_path)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until ``/readyz`` answers 200; raise with the log tail if the process exits or never gets ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"dispatcher exited: {self.log_tail()}")
            status, _ = await http_get(f"http://127.0.0.1:{self.ops_port}/readyz", 1.0)
            if status == 200:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"dispatcher not ready within {timeout:.0f}s: {self.log_tail()}")

    def broker_losses(self) -> int:
        """Count the times this dispatcher lost its broker connection (another suite restarting the shared
        broker, typically): a run with any is disturbed."""
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count("lost the broker connection")

    async def metrics(self) -> Samples:
        """Scrape ``/metrics`` (empty if it does not answer)."""
        status, text = await http_get(f"http://127.0.0.1:{self.ops_port}/metrics")
        return parse_metrics(text) if status == 200 else {}


class Receivers(Subprocess):
    """The receiver process (:mod:`bench.receiver`): ``ok`` ports answer 200, ``hang`` ports never answer in time."""

    def __init__(self, ok: int, hang: int, log_path: Path, hang_seconds: float = 60.0) -> None:
        self.control_port = free_port()
        self.ok_ports = [free_port() for _ in range(ok)]
        self.hang_ports = [free_port() for _ in range(hang)]
        args = [sys.executable, "-m", "bench.receiver", "--control", str(self.control_port),
                "--hang-seconds", str(hang_seconds)]
        args += [a for p in self.ok_ports for a in ("--ok", str(p))]
        args += [a for p in self.hang_ports for a in ("--hang", str(p))]
        super().__init__(args, base_env(), log_path)

    def url(self, port: int) -> str:
        """The webhook URL served on ``port``."""
        return f"http://127.0.0.1:{port}/hook"

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the control port answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"receiver exited: {self.log_tail()}")
            if (await http_get(f"http://127.0.0.1:{self.control_port}/stats", 1.0))[0] == 200:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("receiver not ready")

    async def _call(self, path: str, method: str = "GET") -> Any:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session, \
                session.request(method, f"http://127.0.0.1:{self.control_port}{path}") as resp:
            resp.raise_for_status()
            return await resp.json()

    async def reset(self) -> None:
        """Forget every request recorded so far."""
        await self._call("/reset", "POST")

    async def stats(self) -> dict[str, Any]:
        """Per port: requests, distinct webhook ids, first and last receipt time (epoch seconds)."""
        return dict(await self._call("/stats"))

    async def latencies(self) -> list[list[float]]:
        """``[receipt time, seconds since data.details.sent]`` of every first receipt that carries ``sent``."""
        return list(await self._call("/latencies"))
