"""``check_callback_url``: which addresses and ports imgq will call, without any DNS.

Hostnames resolve through a stand-in for ``socket.getaddrinfo`` that knows only the names a test
gives it; IP literals go to the real resolver, which answers them without a network.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import pytest

from imgq.errors import InvalidCallbackUrl
from imgq.settings import Settings
from imgq.webhooks.callback_urls import check_callback_url, refusal

_REAL_GETADDRINFO = socket.getaddrinfo

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"

REFUSED_ADDRESSES = [
    "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address
    "64:ff9b::7f00:1",  # NAT64 of loopback
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::a9fe:a9fe",  # local-use NAT64
    "2002:a9fe:a9fe::1",  # 6to4 of the metadata address
    "2002:7f00:1::1",  # 6to4 of loopback
    "2002:c0a8:1::1",  # 6to4 of 192.168.0.1
    "2001::1",  # Teredo
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "::7f00:1",  # IPv4-compatible loopback
    "::a9fe:a9fe",  # IPv4-compatible metadata
    "::5db8:d822",  # IPv4-compatible, even of a public address (deprecated)
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:a9fe:a9fe",  # IPv4-mapped metadata
    "::ffff:10.1.2.3",
    "fec0::1",  # site-local
    "fc00::1",  # unique-local
    "fd12:3456::1",
    "fe80::1",  # link-local
    "::1",
    "::",
    "ff02::1",  # multicast
    "ff0e::1",  # global-scope multicast
    "100::1",  # discard-only
    "2001:db8::1",  # documentation
    "3fff::1",  # documentation (RFC 9637)
    "4000::1",  # outside 2000::/3
    "169.254.169.254",
    "169.254.0.1",
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "192.0.0.1",
    "192.0.0.9",
    "192.0.2.1",  # documentation
    "198.51.100.1",
    "203.0.113.1",
    "198.18.0.1",  # benchmarking
    "198.19.255.254",
    "192.88.99.1",  # 6to4 relay anycast
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "255.255.255.255",
]


def _literal(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _resolver(answers: dict[str, list[str]]) -> Callable[..., list[object]]:
    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[object]:
        if _is_ip_literal(host):
            return list(_REAL_GETADDRINFO(host, port, proto=socket.IPPROTO_TCP))
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        infos: list[object] = []
        for address in answers[host]:
            if ":" in address:
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return infos

    return getaddrinfo


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, list[str]]], None]:
    """Make names resolve to the given addresses (and nothing else resolve)."""

    def install(answers: dict[str, list[str]]) -> None:
        monkeypatch.setattr(socket, "getaddrinfo", _resolver(answers))

    return install


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_non_public_literals_are_refused(address: str) -> None:
    with pytest.raises(InvalidCallbackUrl) as refused:
        check_callback_url(f"https://{_literal(address)}/hook", allow_private=False)
    assert refused.value.code == "invalid_callback_url"
    assert refused.value.status == 400
    (listed,) = refused.value.details["addresses"]
    assert ipaddress.ip_address(listed) == ipaddress.ip_address(address)
    assert listed in refused.value.message


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_non_public_answers_are_refused(
    dns: Callable[[dict[str, list[str]]], None], address: str
) -> None:
    dns({"hooks.example.com": [address]})
    with pytest.raises(InvalidCallbackUrl):
        check_callback_url("https://hooks.example.com/imgq", allow_private=False)


def test_the_message_says_why() -> None:
    with pytest.raises(InvalidCallbackUrl) as refused:
        check_callback_url("http://[64:ff9b::a9fe:a9fe]/", allow_private=False)
    message = refused.value.message
    assert "64:ff9b::a9fe:a9fe" in message
    assert "NAT64" in message
    assert "169.254.169.254" in message
    assert "link-local" in message


@pytest.mark.parametrize(
    "url",
    [
        "http://2852039166/",  # 169.254.169.254 in decimal
        "http://0xa9fea9fe/",
        "http://0x7f.1/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://127.0.0.01/",
        "http://0x7f.0.0.1/",
        "http://127.0.0.1./",
        "http://1.2.3.4.5/",
    ],
)
def test_ipv4_in_other_forms_is_refused(url: str) -> None:
    with pytest.raises(InvalidCallbackUrl):
        check_callback_url(url, allow_private=False)
    with pytest.raises(InvalidCallbackUrl):
        check_callback_url(url, allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://\uff11\uff12\uff17.0.0.1/",  # full-width digits, which IDNA folds into 127.0.0.1
        "http://[::ffff:a9fe:a9fe]/",
        "http://evil.example\\@127.0.0.1/",
        "http://user:pass@169.254.169.254/",
        "http://[fe80::1%25eth0]/",
    ],
)
def test_hosts_that_reach_internal_addresses_other_ways_are_refused(url: str) -> None:
    with pytest.raises(InvalidCallbackUrl):
        check_callback_url(url, allow_private=False)


@pytest.mark.parametrize(
    "address",
    [PUBLIC_V4, "1.1.1.1", PUBLIC_V6, "64:ff9b::5db8:d822", "2002:5db8:d822::1"],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_a_name_resolving_to_a_public_address_is_allowed_and_pinned(
    dns: Callable[[dict[str, list[str]]], None],
) -> None:
    dns({"hooks.example.com": [PUBLIC_V4, PUBLIC_V6]})
    target = check_callback_url("https://hooks.example.com/imgq?x=1", allow_private=False)
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 443)
    assert target.target == "/imgq?x=1"
    assert target.address == PUBLIC_V4
    target = check_callback_url("http://hooks.example.com", allow_private=False)
    assert (target.port, target.target) == (80, "/")


@pytest.mark.parametrize("private", ["10.0.0.7", "::ffff:169.254.169.254", "fd00::7"])
@pytest.mark.parametrize("private_first", [True, False])
def test_one_private_answer_among_public_ones_is_refused(
    dns: Callable[[dict[str, list[str]]], None], private: str, private_first: bool
) -> None:
    answers = [private, PUBLIC_V4] if private_first else [PUBLIC_V4, PUBLIC_V6, private]
    dns({"hooks.example.com": answers})
    with pytest.raises(InvalidCallbackUrl) as refused:
        check_callback_url("https://hooks.example.com/imgq", allow_private=False)
    (listed,) = refused.value.details["addresses"]
    assert ipaddress.ip_address(listed) == ipaddress.ip_address(private)
    assert PUBLIC_V4 not in refused.value.message


def test_an_unresolvable_host_is_refused(dns: Callable[[dict[str, list[str]]], None]) -> None:
    dns({})
    with pytest.raises(InvalidCallbackUrl, match="does not resolve"):
        check_callback_url("https://nowhere.example.com/", allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com:8443/",
        "http://hooks.example.com:8080/",
        "http://hooks.example.com:22/",
        "https://hooks.example.com:6379/",
    ],
)
def test_ports_other_than_80_and_443_are_refused(
    dns: Callable[[dict[str, list[str]]], None], url: str
) -> None:
    dns({"hooks.example.com": [PUBLIC_V4]})
    with pytest.raises(InvalidCallbackUrl, match="port") as refused:
        check_callback_url(url, allow_private=False)
    assert refused.value.details["port"] in {8443, 8080, 22, 6379}


@pytest.mark.parametrize("url", ["http://hooks.example.com:99999/", "http://hooks.example.com:0/"])
def test_invalid_ports_are_refused_even_when_private_is_allowed(
    dns: Callable[[dict[str, list[str]]], None], url: str
) -> None:
    dns({"hooks.example.com": [PUBLIC_V4]})
    with pytest.raises(InvalidCallbackUrl, match="port"):
        check_callback_url(url, allow_private=True)


def test_allowed_ports_come_from_the_setting(dns: Callable[[dict[str, list[str]]], None]) -> None:
    dns({"hooks.example.com": [PUBLIC_V4]})
    ports = Settings(webhook_allowed_ports="443, 8443").webhook_ports
    assert ports == frozenset({443, 8443})
    assert check_callback_url("https://hooks.example.com:8443/", False, ports).port == 8443
    assert check_callback_url("https://hooks.example.com/", False, ports).port == 443
    with pytest.raises(InvalidCallbackUrl, match="port 80 "):
        check_callback_url("http://hooks.example.com/", False, ports)
    assert check_callback_url("http://hooks.example.com:443/", False).port == 443
    assert check_callback_url("https://hooks.example.com:80/", False).port == 80


def test_the_ports_setting_defaults_to_80_and_443_and_is_validated() -> None:
    assert Settings().webhook_ports == frozenset({80, 443})
    for bad in ["", "80,", "http", "0", "65536", "80;443"]:
        with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
            Settings(webhook_allowed_ports=bad)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://[::1]:9000/hook",
        "http://localhost:5000/hook",
        "http://10.1.2.3:1234/",
        "http://169.254.169.254/latest/meta-data",
    ],
)
def test_allow_private_allows_any_address_and_port(
    dns: Callable[[dict[str, list[str]]], None], url: str
) -> None:
    dns({"localhost": ["127.0.0.1", "::1"]})
    target = check_callback_url(url, allow_private=True)
    assert refusal(ipaddress.ip_address(target.address)) is not None


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "file:///etc/passwd", "http:///nohost", "call me maybe"]
)
def test_only_http_urls_with_a_host_are_called(url: str) -> None:
    with pytest.raises(InvalidCallbackUrl):
        check_callback_url(url, allow_private=True)
