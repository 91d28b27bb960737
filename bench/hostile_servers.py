"""Hostile webhook receivers in a process of their own, for :mod:`bench.hostile`:
``python -m bench.hostile_servers --out FILE [--kinds gzip-bomb trickle …]``.

Each kind is one raw-socket server on 127.0.0.1 (the behaviours of ``tests/e2e/test_hostile_receivers.py``: a gzip
or deflate bomb of 200 MiB, a body trickled a byte a second, headers that never end, a redirect to itself, a server
that never reads, …). The bombs are built before the servers start; then ``{kind: url}`` is written to ``FILE``
as JSON and the servers run until the process is stopped.
"""

import argparse
import asyncio
import json
from pathlib import Path

from tests.e2e.test_hostile_receivers import KINDS, HostileServer, bomb

DEFAULT_KINDS = ("gzip-bomb", "deflate-bomb", "trickle", "slow-headers", "fast-headers", "redirect", "never-reads")


async def serve(kinds: list[str], out: Path) -> None:
    """Start one server per kind, write their URLs to ``out``, serve until cancelled."""
    for kind in ("gzip", "deflate"):
        bomb(kind)  # a second of CPU each: before the first request, not during the measurement
    servers = {}
    for kind in kinds:
        behave, scheme, *_ = KINDS[kind]
        servers[kind] = await HostileServer(behave, scheme).start()
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: s.url for k, s in servers.items()}))
    tmp.replace(out)
    await asyncio.Event().wait()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kinds", nargs="*", default=list(DEFAULT_KINDS), choices=sorted(KINDS))
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.kinds, args.out))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
