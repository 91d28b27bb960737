"""Start and stop ``nx-27017``, the MongoDB-wire-protocol server on SQLite used locally and in tests.

Example::

    with LocalMongo(Path(".hookpost/mongo")) as server:
        print(server.url)            # mongodb://127.0.0.1:<free port>
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from hookpost.common.errors import HookpostError
from hookpost.common.process import stop_process


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _executable() -> str:
    beside = Path(sys.executable).with_name("nx-27017")
    if beside.exists():
        return str(beside)
    found = shutil.which("nx-27017")
    if not found:
        raise HookpostError("nx-27017 is not installed: pip install 'hookpost[local]' (or nx-27017)")
    return found


class LocalMongo:
    """One ``nx-27017`` process on a free loopback port, with its data, pid file and log in ``folder``."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = Path(folder)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The MongoDB URL of this server."""
        return f"mongodb://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 30.0) -> str:
        """Start the server and wait until it answers a ping; return its URL."""
        self.folder.mkdir(parents=True, exist_ok=True)
        data = self.folder / "data"
        data.mkdir(exist_ok=True)
        cmd = [_executable(), "--data-dir", str(data), "--host", "127.0.0.1", "-p", str(self.port),
               "--pid-file", str(self.folder / "nx.pid"), "--log-file", str(self.folder / "nx.log")]
        with open(self.folder / "nx.stdout", "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.folder / "nx.stdout").read_text(errors="replace")[-2000:]
                raise HookpostError(f"nx-27017 exited with {self.proc.returncode}: {log}")
            if self.ping():
                return self.url
            time.sleep(0.1)
        self.stop()
        raise HookpostError(f"nx-27017 did not answer on port {self.port} within {timeout:.0f}s")

    def ping(self) -> bool:
        """Tell whether the server answers."""
        client: MongoClient[dict[str, object]] = MongoClient(self.url, serverSelectionTimeoutMS=500,
                                                             connectTimeoutMS=500)
        try:
            client.admin.command("ping")
            return True
        except PyMongoError:
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``)."""
        if self.proc is None:
            return
        stop_process(self.proc, timeout)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.folder / "nx.pid")
        self.proc = None

    def __enter__(self) -> "LocalMongo":
        self.start()
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.stop()
