"""Which URLs a webhook may call: no request of ours may reach this machine or the private
network behind it (server-side request forgery), unless an operator lists the exact host.

Checked when a webhook is configured and again before every attempt, on the addresses the name
resolves to then (DNS can change in between); the attempt then connects to the address that
was checked, not to whatever a second lookup would return.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from config.errors import ValidationFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(ValidationFailed):
    error_type = "webhook_target_refused"


@dataclass(frozen=True)
class Target:
    """A URL checked for sending: its scheme, host (as written, lower case), port, the path with
    its query, and the address to connect to."""

    scheme: str
    host: str
    port: int
    path: str
    address: IPAddress


def _refuse(url_reason: str) -> TargetRefused:
    return TargetRefused(
        f"This webhook URL is refused: {url_reason}.", fields={"url": [url_reason]}
    )


# IPv6 prefixes whose addresses carry an IPv4 address that a translator on the way (NAT64 on
# an IPv6-only network, SIIT, the deprecated site-local and IPv4-compatible ranges) may reach:
# such an address is as public as the IPv4 address it carries, no more. Python 3.11 calls
# every one of them global.
_IPV4_CARRYING = (
    ipaddress.ip_network("64:ff9b::/96"),  # NAT64, RFC 6052: the low 32 bits
    ipaddress.ip_network("64:ff9b:1::/48"),  # local-use NAT64, RFC 8215
    ipaddress.ip_network("::ffff:0:0:0/96"),  # SIIT, RFC 2765
    ipaddress.ip_network("::/96"),  # IPv4-compatible, RFC 4291 (deprecated)
)
_NEVER_PUBLIC = (ipaddress.ip_network("fec0::/10"),)  # site-local, RFC 3879 (deprecated)


def _public(address: IPAddress) -> bool:
    """Whether `address` reaches the public internet only: for an IPv6 address carrying an
    IPv4 one (mapped, 6to4, Teredo, NAT64 and the other translated forms), the IPv4 address
    it carries must be public too."""
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in network for network in _NEVER_PUBLIC):
            return False
        carried = [address.ipv4_mapped, address.sixtofour]
        if address.teredo is not None:
            carried.append(address.teredo[1])  # the client's address (server is the other)
            carried.append(address.teredo[0])
        if any(address in network for network in _IPV4_CARRYING):
            carried.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if any(v4 is not None and not _public(v4) for v4 in carried):
            return False
    return address.is_global and not address.is_multicast


def _allowed(host: str, address: IPAddress) -> bool:
    # Exact entries only (a host name as written in the URL, or one IP address), no wildcard.
    allowed = {entry.strip().lower().strip("[]") for entry in settings.WEBHOOK_ALLOWED_HOSTS}
    return host in allowed or str(address) in allowed


def _addresses(host: str, port: int) -> list[IPAddress]:
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _refuse(f"its host {host!r} does not resolve ({exc})") from None
    # A scoped IPv6 address ("fe80::1%eth0") names its interface after the '%'.
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))


def target_check(url: str) -> Target:
    """Parses `url` and resolves its host; TargetRefused (400, naming "url") when the scheme is
    not http(s), the URL carries credentials, the host does not resolve, or any address it
    resolves to is loopback, private, link-local or otherwise not public, unless the host or
    that address is listed in WEBHOOK_ALLOWED_HOSTS. Returns the first address to connect to."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _refuse(f"it is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise _refuse("only http:// and https:// URLs can receive webhooks")
    if parts.username is not None or parts.password is not None:
        raise _refuse("a URL may not carry a user name or password (the signature authenticates)")
    host = (parts.hostname or "").lower()
    if not host:
        raise _refuse("it has no host")
    port = port or (443 if parts.scheme == "https" else 80)
    addresses = _addresses(host, port)
    if not addresses:
        raise _refuse(f"its host {host!r} does not resolve")
    for address in addresses:
        if not _public(address) and not _allowed(host, address):
            # Every address must pass: a client library may try any of them.
            raise _refuse(
                f"{host} resolves to {address}, a loopback, private or link-local address "
                "(list it in WEBHOOK_ALLOWED_HOSTS to allow it)"
            )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme=parts.scheme, host=host, port=port, path=path, address=addresses[0])


def target_url(target: Target) -> str:
    """The URL that connects to the checked address itself (the host name goes in the Host
    header and, for https, in the TLS server name)."""
    address = f"[{target.address}]" if target.address.version == 6 else str(target.address)
    return f"{target.scheme}://{address}:{target.port}{target.path}"


def target_host_header(target: Target) -> str:
    default = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port == default else f"{host}:{target.port}"
