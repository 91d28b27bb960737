"""Run Hookpost's image with the container runtime this machine has (docker or podman), from the tests."""

import asyncio
import json
import os
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class NoRuntime(Exception):
    """No container runtime can run a container here; the message says why."""


@dataclass
class Runtime:
    """A container CLI (``docker`` or ``podman``) and the environment it needs (``CONTAINERS_CONF``)."""

    name: str
    env: dict[str, str]

    @classmethod
    def find(cls) -> "Runtime":
        """Ask ``deploy/local/container-runtime.sh``, which runs a probe container; raise :class:`NoRuntime`."""
        proc = subprocess.run(["bash", str(ROOT / "deploy/local/container-runtime.sh")], capture_output=True,
                              text=True, timeout=180)
        if proc.returncode != 0:
            raise NoRuntime(proc.stderr.strip() or "deploy/local/container-runtime.sh failed")
        found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        env = dict(os.environ)
        if "CONTAINERS_CONF" in found:
            env["CONTAINERS_CONF"] = found["CONTAINERS_CONF"]
        return cls(found["CONTAINER_RUNTIME"], env)

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``<runtime> args...``; with ``check``, fail with its output on a non-zero exit."""
        proc = subprocess.run([self.name, *args], capture_output=True, text=True, timeout=timeout, env=self.env)
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        return proc

    async def call(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The same in a thread, so the test's event loop (and its receivers) keep running."""
        return await asyncio.to_thread(self, *args, timeout=timeout, check=check)

    def inspect(self, name: str) -> dict[str, Any]:
        """``inspect`` of one container or image."""
        return json.loads(self("inspect", name).stdout)[0]


@dataclass
class Containers:
    """Containers started by one test: run on the host network, read-only with a tmpfs /tmp, removed afterwards."""

    runtime: Runtime
    image: str
    started: list[str] = field(default_factory=list)

    async def run(self, name: str, command: list[str], env: dict[str, str], *extra: str) -> str:
        """Start ``hookpost <command>`` detached as container ``name``; return the name."""
        args = ["run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        await self.runtime.call("rm", "-f", name, check=False)
        if name not in self.started:
            self.started.append(name)
        await self.runtime.call(*args, *extra, self.image, *command)
        return name

    async def logs(self, name: str) -> str:
        """The container's output so far (stdout and stderr)."""
        proc = await self.runtime.call("logs", name, check=False)
        return proc.stdout + proc.stderr

    async def state(self, name: str) -> dict[str, Any]:
        """The container's ``State`` (``Running``, ``ExitCode``, ...)."""
        return (await asyncio.to_thread(self.runtime.inspect, name))["State"]

    def remove_all(self) -> None:
        """Remove every container this test started, running or not."""
        quick = ["-t", "0"] if self.runtime.name == "podman" else []  # podman would wait 10 s first; docker kills
        for name in self.started:
            self.runtime("rm", "-f", *quick, name, check=False)


def report(config: Any, line: str) -> None:
    """Show a measurement in the test run's output, also under ``-q`` and without ``-s``."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n{line}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
