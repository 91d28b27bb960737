"""Safe targets: refuse to send webhooks to the internal network (SSRF), checked on resolved addresses.

Refused by default: loopback, private (RFC 1918, CGNAT 100.64/10), link-local (incl. 169.254.169.254),
unique-local IPv6, multicast, unspecified, reserved/benchmark ranges, and the IPv4-mapped, NAT64 (64:ff9b::/96)
and 6to4 (2002::/16) IPv6 forms of those. These are plain rules over addresses and URLs (no I/O): the
dispatcher's ``SafeResolver`` applies them to the addresses a name resolves to at connect time, so a DNS answer
that changes after the URL was checked (rebinding) is caught; ``admin`` checks webhook URLs with them.

>>> TargetPolicy().refusal("127.0.0.1")
'127.0.0.1 is a loopback address'
>>> TargetPolicy(allow_private=True).refusal("10.0.0.1") is None
True
"""

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

from hookpost.common.errors import InvalidInputError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_6TO4 = ipaddress.ip_network("2002::/16")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address inside an IPv4-mapped, NAT64 or 6to4 IPv6 address, else None."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _6TO4:
        return ip.sixtofour
    return None


def classify(ip: IPAddress) -> str | None:
    """Return why ``ip`` is not a public unicast address ("a loopback address", …), or None if it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            why = classify(inner)
            return f"{why} (embedded in IPv6)" if why else None
        if ip.scope_id:
            return "a scoped IPv6 address"
    checks = (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    )
    for attr, why in checks:
        if getattr(ip, attr):
            return why
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a shared (CGNAT) address"
    if not ip.is_global:
        return "not a global address"
    return None


class TargetPolicy:
    """Which receiver addresses are allowed: public ones, plus everything when ``allow_private``, plus
    ``allowed_networks`` (CIDRs)."""

    def __init__(self, *, allow_private: bool = False, allowed_networks: Sequence[str] = (),
                 require_https: bool = False) -> None:
        self.allow_private = allow_private
        self.require_https = require_https
        try:
            self.allowed = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
        except ValueError as exc:
            raise InvalidInputError(f"HOOKPOST_ALLOWED_TARGET_NETWORKS: {exc}") from None

    def refusal(self, address: str) -> str | None:
        """Return why webhooks may not go to ``address`` (an IP literal), or None if they may."""
        ip = ipaddress.ip_address(address.split("%")[0])
        if self.allow_private or any(ip in net for net in self.allowed):
            return None
        why = classify(ip)
        return f"{address} is {why}" if why else None

    def check_url(self, url: str) -> None:
        """Raise :class:`InvalidInputError` unless ``url`` is an absolute http(s) URL we may send to.

        A literal IP host is checked here; a host name is checked again on every connect.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise InvalidInputError(f"invalid URL {url!r}: only http:// and https:// URLs can receive webhooks")
        if self.require_https and parts.scheme != "https":
            raise InvalidInputError(f"invalid URL {url!r}: https is required (HOOKPOST_REQUIRE_HTTPS)")
        try:
            host, _port = parts.hostname, parts.port
        except ValueError as exc:
            raise InvalidInputError(f"invalid URL {url!r}: {exc}") from None
        if not host:
            raise InvalidInputError(f"invalid URL {url!r}: no host")
        if parts.username or parts.password:
            raise InvalidInputError(f"invalid URL {url!r}: credentials in URLs are not allowed; use headers")
        literal = _ip_literal(host)
        if literal is not None:
            why = self.refusal(literal)
            if why:
                raise InvalidInputError(f"refused target {url!r}: {why} (set HOOKPOST_ALLOW_PRIVATE_TARGETS=true "
                                        "for local receivers)")


def _ip_literal(host: str) -> str | None:
    try:
        ipaddress.ip_address(host.split("%")[0])
        return host
    except ValueError:
        return None
