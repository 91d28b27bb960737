"""Safe targets at connect time: :class:`SafeResolver` drops refused addresses a host name resolves to.

The rules themselves (which addresses and URLs are refused) are plain functions in :mod:`hookpost.common.targets`,
shared with ``admin``, which checks webhook URLs when they are created or changed.
"""

import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from hookpost.common.targets import TargetPolicy, classify, embedded_ipv4

__all__ = ["SafeResolver", "TargetPolicy", "TargetRefusedError", "classify", "embedded_ipv4", "resolver_kwargs"]


class TargetRefusedError(OSError):
    """The receiver's address is in a range webhooks may not be sent to."""


class SafeResolver(AbstractResolver):
    """An aiohttp resolver that drops refused addresses and fails if none is left."""

    def __init__(self, policy: TargetPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        """Resolve ``host`` and keep only allowed addresses."""
        results = await self.inner.resolve(host, port, family)
        allowed = [r for r in results if self.policy.refusal(r["host"]) is None]
        if not allowed:
            reasons = sorted({self.policy.refusal(r["host"]) or "" for r in results})
            raise TargetRefusedError(f"refused target {host}: " + "; ".join(reasons))
        return allowed

    async def close(self) -> None:
        """Close the inner resolver."""
        await self.inner.close()


def resolver_kwargs(policy: TargetPolicy) -> dict[str, Any]:
    """Return ``TCPConnector`` keyword arguments that enforce ``policy``."""
    return {"resolver": SafeResolver(policy)}
