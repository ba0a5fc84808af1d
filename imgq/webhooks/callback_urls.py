"""Which callback URLs imgq will call: http(s) to public addresses only, checked once, pinned.

A webhook is a request that *our* network makes on a client's behalf, so a URL pointing at
loopback, a private range, link-local (cloud metadata at 169.254.169.254) or other reserved
addresses would let a client probe the inside of the deployment. The host is resolved once,
every address it resolves to must be public, and the delivery connects to that checked address
(with the original host for ``Host`` and TLS), so a DNS answer that changes between check and
use (rebinding) cannot redirect it. ``IMGQ_WEBHOOK_ALLOW_PRIVATE`` lifts the address check for
local runs and tests.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from imgq.errors import InvalidCallbackUrl


@dataclass(frozen=True)
class CallbackTarget:
    """A checked callback: where to connect, and what to say the host is."""

    scheme: str
    host: str
    port: int
    target: str  # path and query
    address: str  # the checked IP to connect to


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_callback_url(url: str, allow_private: bool) -> CallbackTarget:
    """Parse, resolve and check a callback URL.

    Raises:
        InvalidCallbackUrl: not http(s), no host, unresolvable, or a non-public address.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidCallbackUrl(
            f"Callback URLs must be http or https, not {parts.scheme!r}.", {"url": url}
        )
    if not parts.hostname:
        raise InvalidCallbackUrl("The callback URL has no host.", {"url": url})
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise InvalidCallbackUrl(
            f"The callback URL's port is invalid: {exc}", {"url": url}
        ) from exc
    try:
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidCallbackUrl(
            f"The callback host does not resolve: {exc}", {"url": url}
        ) from exc
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not allow_private:
        refused = sorted({str(a) for a in addresses if not _is_public(a)})
        if refused:
            raise InvalidCallbackUrl(
                "The callback host resolves to addresses imgq will not call "
                "(loopback, private, link-local or reserved).",
                {"url": url, "addresses": refused},
            )
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return CallbackTarget(parts.scheme, parts.hostname, port, target, str(addresses[0]))
