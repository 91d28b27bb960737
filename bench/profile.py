"""Profile the dispatcher with py-spy (optional: ``pip install py-spy``) and rank its hot spots.

py-spy's ``raw`` format is one line per distinct stack, ``frame;frame;…;leaf count``, with frames like
``handle (dispatcher/delivery.py)``. Only samples that hold the GIL are kept (``--gil``), so
waiting in ``select`` and idle threads are left out: the shares below are shares of the time the dispatcher was
running Python code (C code that keeps the GIL, e.g. JSON or pydantic-core, included).
"""

import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def py_spy() -> str | None:
    """Return the py-spy executable (beside the interpreter or on PATH), or None if it is not installed."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """``py-spy record`` attached to a running process until :meth:`stop`."""

    def __init__(self, pid: int, output: Path, rate: int = 200) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed: pip install py-spy")
        self.output = output
        self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--output", str(output), "--format", "raw",
                                      "--nolineno", "--gil", "--rate", str(rate)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> Path:
        """Stop sampling and return the path of the raw stacks."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.output


def _package(frame: str) -> str:
    """Return a frame's file's top package (``pika``, ``asyncio``, ``dispatcher``, …)."""
    if "(" not in frame:
        return frame
    path = frame.rsplit("(", 1)[1].rstrip(")")
    return path.split("/")[0].removesuffix(".py")


# Stages of the dispatcher's work, by the frame that marks them on a stack (the first that matches wins, so the
# shares add up): what one delivery's CPU is spent on.
STAGES = (
    ("HTTP request: aiohttp POST, signing, reading the answer", "Sender.send ("),
    ("fan-out: validate change events, build events, publish deliveries", "FanOut.handle ("),
    ("store writes: batched inserts and updates (pymongo)", "Batcher._run ("),
    ("delivery bookkeeping: parse the message, slots, decide, record, ack", "DeliveryHandler.handle ("),
    ("AMQP frames in: deliveries and confirms (pika)", "_AsyncPlaintextTransport._on_socket_readable ("),
    ("one task per message (start, error guard)", "Worker._guarded ("),
)
OTHER_STAGE = "the rest: event loop, timers, store replies, metrics"


def _stacks(raw: Path) -> Iterator[tuple[str, int]]:
    """Yield ``(stack, samples)`` for each line of a py-spy ``raw`` file."""
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            yield stack, int(count_text)


def stages(raw: Path) -> list[dict[str, Any]]:
    """Split the samples into :data:`STAGES` (and the rest); return each stage's share in percent."""
    counts: Counter[str] = Counter()
    total = 0
    for stack, count in _stacks(raw):
        total += count
        counts[next((n for n, marker in STAGES if marker in stack), OTHER_STAGE)] += count
    names = [n for n, _ in STAGES] + [OTHER_STAGE]
    return [{"stage": n, "pct": round(100 * counts[n] / total, 1) if total else 0.0} for n in names]


def hot_spots(raw: Path, top: int = 25) -> dict[str, Any]:
    """Rank functions by self and inclusive share of samples, and packages by self share."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    pkg_counts: Counter[str] = Counter()
    total = 0
    for stack, count in _stacks(raw):
        frames = [f for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        pkg_counts[_package(frames[-1])] += count
        for frame in set(frames):
            incl_counts[frame] += count

    def pct(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [{"frame": f, "pct": round(100 * c / total, 1)} for f, c in counter.most_common(n)] if total else []

    # frames on (almost) every stack are the run loop and the CLI around it: they say nothing
    incl_counts = Counter({f: c for f, c in incl_counts.items() if c < 0.9 * total})
    return {"samples": total, "self": pct(self_counts, top), "inclusive": pct(incl_counts, top),
            "packages": pct(pkg_counts, 15), "stages": stages(raw)}
