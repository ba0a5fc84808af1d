"""Which callback URLs imgq will call: http(s) to public addresses only, checked once, pinned.

A webhook is a request that *our* network makes on a client's behalf, so a URL pointing at
loopback, a private range, link-local (cloud metadata at 169.254.169.254) or other reserved
addresses would let a client probe the inside of the deployment. The host is resolved once,
every address it resolves to must be public, and the delivery connects to that checked address
(with the original host for ``Host`` and TLS), so a DNS answer that changes between check and
use (rebinding) cannot redirect it.

"Public" is decided by explicit deny lists, not by ``ipaddress.is_global`` alone, which calls
NAT64 (``64:ff9b::a9fe:a9fe``), 6to4 (``2002:a9fe:a9fe::1``), IPv4-compatible (``::7f00:1``),
site-local (``fec0::1``) and IPv4 multicast addresses global. Addresses that carry an IPv4
address (IPv4-mapped, NAT64, 6to4) are decoded and the IPv4 address is checked too; IPv6 must
lie in the global unicast range ``2000::/3``. Numeric hosts that are not dotted-decimal IPv4
(``2852039166``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``) are refused before resolution. Only
ports 80 and 443 are called (``IMGQ_WEBHOOK_ALLOWED_PORTS`` adds more).

``IMGQ_WEBHOOK_ALLOW_PRIVATE`` lifts the address and port checks for local runs and tests.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from imgq.errors import InvalidCallbackUrl

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_ALLOWED_PORTS: frozenset[int] = frozenset({80, 443})
"""Ports a callback may use unless the caller passes ``Settings.webhook_ports``."""


@dataclass(frozen=True)
class CallbackTarget:
    """A checked callback: where to connect, and what to say the host is."""

    scheme: str
    host: str
    port: int
    target: str  # path and query
    address: str  # the checked IP to connect to


def _networks(
    *entries: tuple[str, str],
) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]:
    return tuple((ipaddress.ip_network(network), why) for network, why in entries)


_DENIED_V4 = _networks(
    ("0.0.0.0/8", "'this network'"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space, carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local, cloud metadata"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.31.196.0/24", "AS112 DNS"),
    ("192.52.193.0/24", "AMT"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("192.175.48.0/24", "AS112 DNS"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
)
"""IPv4 ranges never called, most specific reason first where ranges nest."""

_DENIED_V6 = _networks(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("::/96", "IPv4-compatible, deprecated"),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local, deprecated"),
    ("ff00::/8", "multicast"),
)
"""IPv6 ranges never called (besides everything outside ``2000::/3``)."""

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_CARRIERS = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), "IPv4-mapped", 0),
    (_NAT64, "NAT64", 0),
    (_SIX_TO_FOUR, "6to4", 80),
)
"""IPv6 ranges that stand for an IPv4 address, and where it sits (a right shift)."""
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")

_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*", re.IGNORECASE)
"""A last label that makes a URL host an IPv4 address to URL parsers and ``inet_aton``."""


def refusal(address: IPAddress) -> str | None:
    """Why imgq will not call ``address``, or None when it is public."""
    if isinstance(address, ipaddress.IPv4Address):
        return _refusal_v4(address)
    return _refusal_v6(address)


def _refusal_v4(address: ipaddress.IPv4Address) -> str | None:
    for network, why in _DENIED_V4:
        if address in network:
            return f"{why} ({network})"
    if not address.is_global:
        return "not a global address"
    return None


def _denied_v6(address: ipaddress.IPv6Address) -> str | None:
    for network, why in _DENIED_V6:
        if address in network:
            if network == _IPV4_COMPATIBLE:
                return f"{why} ({network}) form of {ipaddress.IPv4Address(int(address))}"
            return f"{why} ({network})"
    return None


def _refusal_v6(address: ipaddress.IPv6Address) -> str | None:
    why = _denied_v6(address)
    if why is None:
        for network, kind, shift in _CARRIERS:
            if address in network:
                ipv4 = ipaddress.IPv4Address((int(address) >> shift) & 0xFFFFFFFF)
                inner = _refusal_v4(ipv4)
                why = None if inner is None else f"{kind} ({network}) form of {ipv4}: {inner}"
                if network != _SIX_TO_FOUR:
                    return why  # outside 2000::/3, but the IPv4 address it stands for decides
                break
    if why is None and address not in _GLOBAL_UNICAST:
        why = f"outside the global unicast range ({_GLOBAL_UNICAST})"
    if why is None and not address.is_global:
        why = "not a global address"
    return why


def _check_numeric_host(host: str, url: str) -> None:
    """Refuse IPv4 hosts in any form but dotted decimal (``2852039166``, ``0x7f.1``, ...).

    URL parsers and ``inet_aton`` read such names as addresses; ``ipaddress`` does not, so
    they are refused rather than left to whichever parser reads them next.
    """
    if ":" in host:
        return  # an IPv6 literal
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise InvalidCallbackUrl("The callback host is not a valid name.", {"url": url}) from exc
    last_label = ascii_host.removesuffix(".").rpartition(".")[2]
    if not _NUMERIC_LABEL.fullmatch(last_label):
        return
    try:
        ipaddress.IPv4Address(ascii_host)
    except ValueError as exc:
        raise InvalidCallbackUrl(
            "The callback host looks like an IPv4 address but is not in dotted-decimal form "
            "(four decimal numbers without leading zeros).",
            {"url": url},
        ) from exc


def _port(parts: SplitResult, url: str) -> int:
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidCallbackUrl(
            f"The callback URL's port is invalid: {exc}", {"url": url}
        ) from exc
    if port is None:
        return 443 if parts.scheme == "https" else 80
    if port == 0:
        raise InvalidCallbackUrl("The callback URL's port is invalid: 0.", {"url": url})
    return port


def _resolve(host: str, port: int, url: str) -> list[IPAddress]:
    """Every distinct address ``host`` resolves to, in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise InvalidCallbackUrl(
            f"The callback host does not resolve: {exc}", {"url": url}
        ) from exc
    addresses: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            if address not in addresses:
                addresses.append(address)
    if not addresses:
        raise InvalidCallbackUrl("The callback host has no IP address.", {"url": url})
    return addresses


def check_callback_url(
    url: str,
    allow_private: bool,
    allowed_ports: frozenset[int] = DEFAULT_ALLOWED_PORTS,
) -> CallbackTarget:
    """Parse, resolve and check a callback URL.

    Args:
        url: the client's callback URL.
        allow_private: call any address and any port (local runs and tests).
        allowed_ports: the ports a callback may use otherwise (``Settings.webhook_ports``).

    Raises:
        InvalidCallbackUrl: not http(s), no host, a port not allowed, unresolvable, or any
            address it resolves to not public.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidCallbackUrl(
            f"Callback URLs must be http or https, not {parts.scheme!r}.", {"url": url}
        )
    host = parts.hostname
    if not host:
        raise InvalidCallbackUrl("The callback URL has no host.", {"url": url})
    port = _port(parts, url)
    if not allow_private and port not in allowed_ports:
        allowed = ", ".join(str(p) for p in sorted(allowed_ports)) or "none"
        raise InvalidCallbackUrl(
            f"Callbacks to port {port} are not allowed (allowed ports: {allowed}).",
            {"url": url, "port": port},
        )
    _check_numeric_host(host, url)
    addresses = _resolve(host, port, url)
    if not allow_private:
        refused = {str(a): why for a in addresses if (why := refusal(a)) is not None}
        if refused:
            reasons = "; ".join(f"{a} is {why}" for a, why in refused.items())
            raise InvalidCallbackUrl(
                f"The callback host resolves to addresses imgq will not call: {reasons}.",
                {"url": url, "addresses": sorted(refused)},
            )
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return CallbackTarget(parts.scheme, host, port, target, str(addresses[0]))
