"""The broker URL: one or several RabbitMQ nodes, read the way oslo.messaging reads its
``transport_url`` (pure: no I/O, no logging).

``amqp://user:pass@host1:5672,user2:pass2@host2:5673,host3/vhost`` (or ``amqps://``): the
hosts are separated by commas, each with its own optional ``user:password@`` and ``:port``.
The rules are oslo's (``TransportURL.parse`` in ``oslo_messaging/transport.py``, then the
rabbit driver and kombu, checked with oslo.messaging 18.3.1 and kombu 5.7.0):

- a host without a user name or password logs in as ``guest`` / ``guest`` (kombu's default);
  it does **not** take the previous host's credentials. An empty user name or password is
  no user name or password (``u:@h`` logs in as ``u`` / ``guest``). oslo warns when some hosts
  have credentials and others do not (:attr:`BrokerURL.mixed_credentials`);
- user names and passwords are percent-decoded; characters other than letters, digits and
  ``&=$-_.+!*()`` must be percent-encoded (``@`` as ``%40``, ``:`` as ``%3A``, ``/`` as ``%2F``);
- an IPv6 literal goes in brackets (``[::1]:5672``); oslo also takes a bare IPv6 literal
  (without a port);
- the vhost is the percent-decoded path after the first ``/``: nothing (``/`` or no path) is
  the default vhost ``/``, which can also be written ``%2F`` or ``//``;
- empty entries between commas are skipped.

Where lbactors is stricter than oslo: a port must be a number from 1 to 65535, ``amqps://``
defaults to port 5671 (oslo's rabbit driver always uses 5672 and takes TLS from its ``ssl``
option), and a query string or fragment is an error (oslo reads driver options from the query;
lbactors has no such options: ignoring them, ``?ssl=1`` say, would silently connect in clear).

Every error message names the part that is wrong without quoting anything of the hosts
part: a host is named by its position ("host 2 of 3"), because a password with an
unencoded ``,`` or ``/`` spills into what looks like the next host or a port.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

__all__ = [
    "BrokerHost",
    "BrokerURL",
    "BrokerURLError",
    "format_url",
    "mask_url",
    "parse_url",
]

SCHEMES = ("amqp", "amqps")
DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
#: kombu's user name and password when the URL gives none (oslo leaves them to kombu)
DEFAULT_CREDENTIALS = ("guest", "guest")
MASK = "***"

_HOST_NAME = re.compile(r"[\w.-]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


class BrokerURLError(ValueError):
    """The broker URL is not valid; the message says which part, never with a password."""


@dataclass(frozen=True, slots=True)
class BrokerHost:
    """One node of the URL. ``host`` is a name or an IP address (IPv6 without brackets)."""

    host: str
    port: int
    username: str = DEFAULT_CREDENTIALS[0]
    password: str = field(default=DEFAULT_CREDENTIALS[1], repr=False)
    #: whether the URL gave this host a user name and password (oslo's check of mixed URLs)
    credentials: bool = True

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port``): what log lines and errors name; no credentials."""
        if ":" in self.host:
            return f"[{quote(self.host, safe=':')}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class BrokerURL:
    scheme: str
    hosts: tuple[BrokerHost, ...]
    vhost: str = "/"

    @property
    def tls(self) -> bool:
        return self.scheme == "amqps"

    @property
    def mixed_credentials(self) -> bool:
        """Some hosts have credentials and others log in as guest: oslo warns about this."""
        given = {host.credentials for host in self.hosts}
        return len(given) == 2

    @property
    def addresses(self) -> list[str]:
        return [host.address for host in self.hosts]


def parse_url(url: str) -> BrokerURL:
    """``url`` as a :class:`BrokerURL`; raises :class:`BrokerURLError` naming the bad part."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise BrokerURLError("not a URL: expected amqp://[user:password@]host[:port][,...]/[vhost]")
    if not _SCHEME.fullmatch(scheme):
        raise BrokerURLError("scheme must be amqp:// or amqps://")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        hint = (
            " (oslo's rabbit:// is amqp://, or amqps:// with its ssl option)"
            if scheme == "rabbit"
            else ""
        )
        raise BrokerURLError(f"scheme must be amqp:// or amqps://, not {scheme!r}{hint}")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    if "@" in tail:
        raise BrokerURLError(
            "an '@' after the hosts: a '/', '?' or '#' in a user name or password must be "
            "percent-encoded (%2F, %3F, %23), and an '@' as %40"
        )
    if "?" in tail or "#" in tail:
        raise BrokerURLError(
            "a query ('?...') or fragment ('#...') is not supported: lbactors takes no options "
            "from the URL (TLS is amqps://, its CA file amqp.ca_file)"
        )
    parts = [part for part in netloc.split(",") if part]
    if not parts:
        raise BrokerURLError("no host name")
    hosts = tuple(
        _parse_host(part, position, len(parts), DEFAULT_PORTS[scheme])
        for position, part in enumerate(parts, 1)
    )
    vhost = unquote(tail[1:]) if len(tail) > 1 else "/"
    return BrokerURL(scheme=scheme, hosts=hosts, vhost=vhost)


def _parse_host(part: str, position: int, count: int, default_port: int) -> BrokerHost:
    which = f"host {position} of {count}" if count > 1 else "host"
    username = password = ""
    credentials = False
    hostport = part
    if "@" in part:
        userinfo, hostport = part.rsplit("@", 1)
        user_text, has_password, password_text = userinfo.partition(":")
        username = unquote(user_text)
        password = unquote(password_text) if has_password else ""
        credentials = bool(has_password)  # oslo: a user without a password is "without"
    port_text: str | None = None
    if hostport.startswith("["):
        inside, closed, after = hostport[1:].partition("]")
        if not closed:
            raise BrokerURLError(f"{which}: '[' without ']' (an IPv6 address: [::1]:5672)")
        host = unquote(inside)
        if not _is_ipv6(host):
            raise BrokerURLError(f"{which}: what is in brackets is not an IPv6 address")
        if after:
            if not after.startswith(":"):
                raise BrokerURLError(f"{which}: expected ':port' after ']'")
            port_text = after[1:]
    elif hostport.count(":") > 1:
        host = unquote(hostport)
        if not _is_ipv6(host):
            raise BrokerURLError(
                f"{which}: more than one ':' (an IPv6 address with a port goes in brackets: "
                "[::1]:5672)"
            )
    else:
        host, has_port, port_text_or_empty = hostport.partition(":")
        port_text = port_text_or_empty if has_port else None
        if not host:
            raise BrokerURLError(f"{which}: no host name")
        if not _HOST_NAME.fullmatch(host):
            raise BrokerURLError(
                f"{which}: not a host name (letters, digits, '.', '-', '_'; an IPv6 address "
                "in brackets)"
            )
    port = default_port
    if port_text is not None:
        if not port_text:
            raise BrokerURLError(f"{which}: empty port after ':'")
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            hint = "" if "@" in part else " (a user:password needs '@host' after it)"
            raise BrokerURLError(f"{which}: the port must be a number from 1 to 65535{hint}")
        port = int(port_text)
    return BrokerHost(
        host=host,
        port=port,
        username=username or DEFAULT_CREDENTIALS[0],
        password=password or DEFAULT_CREDENTIALS[1],
        credentials=credentials,
    )


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def format_url(url: BrokerURL) -> str:
    """The URL text of ``url``: :func:`parse_url` of it gives ``url`` back (every port is
    written out, credentials only where the URL gave them). It holds the passwords: for a
    log line or an error message use :func:`mask_url` or :attr:`BrokerHost.address`."""
    netlocs = []
    for host in url.hosts:
        userinfo = ""
        if host.credentials:
            userinfo = f"{quote(host.username, safe='')}:{quote(host.password, safe='')}@"
        elif host.username != DEFAULT_CREDENTIALS[0]:  # a user name alone: ``u@host``
            userinfo = f"{quote(host.username, safe='')}@"
        netlocs.append(userinfo + host.address)
    vhost = "" if url.vhost == "/" else quote(url.vhost, safe="")
    return f"{url.scheme}://{','.join(netlocs)}/{vhost}"


def mask_url(url: str) -> str:
    """``url`` with every host's password replaced by ``***``, the rest as written.

    A URL that does not parse is masked whole after the scheme: where its password ends is
    not known.
    """
    try:
        parse_url(url)
    except BrokerURLError:
        scheme, separator, _ = url.partition("://")
        return f"{scheme}://{MASK}" if separator and _SCHEME.fullmatch(scheme) else MASK
    scheme, _, rest = url.partition("://")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    parts = []
    for part in rest[:end].split(","):
        if "@" in part:
            userinfo, hostport = part.rsplit("@", 1)
            user, has_password, _ = userinfo.partition(":")
            if has_password:
                part = f"{user}:{MASK}@{hostport}"
        parts.append(part)
    return f"{scheme}://{','.join(parts)}{rest[end:]}"
