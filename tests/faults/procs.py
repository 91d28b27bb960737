"""Run ``hookpost dispatcher`` as a real subprocess: start it, ``kill -9`` it, start it again, SIGTERM it.

Example::

    proc = DispatcherProcess(dispatcher_env(settings, shutdown_grace=5), tmp_path / "d1.log").start()
    await proc.wait_ready()
    proc.kill9(); proc.start()                    # crash and come back
    code, seconds = await proc.terminate()       # graceful stop: (exit code, time it took)
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from hookpost.common.process import stop_process
from hookpost.common.settings import Settings, settings_env
from hookpost.store.localserver import free_port
from tests.helpers import wait_until


def hookpost_executable() -> str:
    """Return the ``hookpost`` console script of the running interpreter's environment."""
    beside = Path(sys.executable).with_name("hookpost")
    return str(beside) if beside.exists() else "hookpost"


def dispatcher_env(settings: Settings, **overrides: Any) -> dict[str, str]:
    """Return the environment for a ``hookpost dispatcher`` subprocess running with ``settings``.

    Every settings field becomes its ``HOOKPOST_*`` variable; ``overrides`` replace fields
    (``shutdown_grace=3.0``, ``ops_port=9100``). The JSON log format is forced so the helpers here can read the
    log. Inherited ``HOOKPOST_*`` variables are dropped.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    values = {name: getattr(settings, name) for name in type(settings).model_fields}
    values.update(overrides)
    env.update(settings_env(values))
    env["HOOKPOST_LOG_FORMAT"] = "json"
    return env


class DispatcherProcess:
    """One ``hookpost dispatcher`` subprocess, restartable; every run appends to the same log file.

    The ops server listens on a fixed free port (``ops_port``), kept across restarts, so ``/readyz`` can be
    probed from the test.
    """

    def __init__(self, env: Mapping[str, str], log_path: Path, *, name: str = "dispatcher") -> None:
        self.name = name
        self.log_path = Path(log_path)
        self.ops_port = int(env.get("HOOKPOST_OPS_PORT") or 0) or free_port()  # 0 would pick a port we can't know
        self.env = {**env, "HOOKPOST_OPS_PORT": str(self.ops_port)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def pid(self) -> int | None:
        """The process id while one runs."""
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "DispatcherProcess":
        """Start the process (it must not be running)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([hookpost_executable(), "dispatcher"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.starts += 1
        return self

    def kill9(self) -> None:
        """``kill -9`` the process and reap it (no cleanup runs in it)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.kills += 1
        self.proc.wait(10)

    def restart_hard(self) -> None:
        """``kill -9`` the process and start it again at once."""
        self.kill9()
        self.start()

    async def wait_exit(self, timeout: float) -> int:
        """Wait (without blocking the event loop) until the process exits; return its exit code."""
        proc = self.proc
        if proc is None:
            raise RuntimeError(f"{self.name} was never started")
        await wait_until(lambda: proc.poll() is not None, timeout, interval=0.05, message=f"{self.name} to exit")
        return int(proc.returncode)

    async def terminate(self, timeout: float = 30.0) -> tuple[int, float]:
        """Send SIGTERM and wait for the exit; return ``(exit code, seconds it took)``."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = await self.wait_exit(timeout)
        return code, time.monotonic() - began

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop for teardown: SIGTERM, then SIGKILL after ``timeout``; return the exit code."""
        if self.proc is None:
            return None
        return stop_process(self.proc, timeout)

    async def readyz(self) -> int | None:
        """Return the HTTP status of ``/readyz`` (None if the ops server does not answer)."""
        return (await probe(f"http://127.0.0.1:{self.ops_port}/readyz"))[0]

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until ``/readyz`` answers 200 (connected to the broker, store reachable)."""
        async def ready() -> bool:
            if not self.running:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode if self.proc else None}; "
                                     f"log: {self.log_tail()}")
            return await self.readyz() == 200
        await wait_until(ready, timeout, interval=0.1, message=f"{self.name} /readyz 200")

    def log_records(self) -> list[dict[str, Any]]:
        """Return the JSON log lines of every run so far (other lines are skipped)."""
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def count_logged(self, message: str) -> int:
        """Count log records whose message is ``message``."""
        return sum(1 for r in self.log_records() if r.get("message") == message)

    def log_tail(self, chars: int = 3000) -> str:
        """Return the end of the log (for assertion messages)."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


async def probe(url: str, timeout: float = 2.0) -> tuple[int | None, dict[str, Any]]:
    """GET ``url``; return the status code and the JSON body (``(None, {})`` if nothing answers)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
                session.get(url) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = {}
            return resp.status, body if isinstance(body, dict) else {}
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None, {}
