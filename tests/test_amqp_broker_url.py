"""The broker URL with several hosts (oslo's transport_url): parsing, oslo's own reading of the
same URLs as the oracle, masking, and error messages that never quote a password."""

from __future__ import annotations

import string
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbactors.amqp.broker_url import (
    BrokerHost,
    BrokerURL,
    BrokerURLError,
    format_url,
    mask_url,
    parse_url,
)
from lbactors.config import ConfigError, load_config

# -- strategies ----------------------------------------------------------------------------

#: a character no generated host name, user name or vhost holds: a password holding it can
#: be looked for in a masked URL without false alarms
SECRET_MARK = "§"
_text = st.characters(blacklist_categories=("Cs",), blacklist_characters=SECRET_MARK)
_label = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=12)
host_names = st.lists(_label, min_size=1, max_size=3).map(".".join)
ipv6_hosts = st.ip_addresses(v=6).map(str)
ports = st.integers(1, 65535)
user_names = st.text(_text, min_size=1, max_size=12)
passwords = st.text(_text, max_size=12).map(lambda text: SECRET_MARK + text)


@st.composite
def broker_hosts(draw: st.DrawFn) -> BrokerHost:
    host = draw(st.one_of(host_names, ipv6_hosts))
    if draw(st.booleans()):
        return BrokerHost(host, draw(ports), draw(user_names), draw(passwords))
    return BrokerHost(host, draw(ports), credentials=False)


@st.composite
def broker_urls(draw: st.DrawFn) -> BrokerURL:
    return BrokerURL(
        scheme=draw(st.sampled_from(["amqp", "amqps"])),
        hosts=tuple(draw(st.lists(broker_hosts(), min_size=1, max_size=4))),
        vhost=draw(st.one_of(st.just("/"), st.text(_text, min_size=1, max_size=12))),
    )


# -- round trips and masking (property tests) ----------------------------------------------


@given(broker_urls())
def test_format_then_parse_gives_the_same_url(url: BrokerURL) -> None:
    assert parse_url(format_url(url)) == url


@given(broker_urls())
def test_masking_hides_every_password_and_keeps_everything_else(url: BrokerURL) -> None:
    masked = mask_url(format_url(url))
    assert SECRET_MARK not in masked
    assert quote(SECRET_MARK, safe="") not in masked
    seen = parse_url(masked)
    assert seen.scheme == url.scheme and seen.vhost == url.vhost
    assert [(h.host, h.port, h.username, h.credentials) for h in seen.hosts] == [
        (h.host, h.port, h.username, h.credentials) for h in url.hosts
    ]
    assert all(h.password == "***" for h in seen.hosts if h.credentials)


@given(
    before=st.lists(st.sampled_from(["h1", "h2:5673", "u:p@h3", "[::1]:5674"]), max_size=2),
    separator=st.sampled_from(["", "/", "?", "#", ",", "@", ":", "[", "]", ",x,", ":1,", "%"]),
    after=st.text("abcdefgh0123456789:[]@/,?#%.-", max_size=16),
)
def test_no_error_message_and_no_masked_url_shows_a_password(
    before: list[str], separator: str, after: str
) -> None:
    """A password (``PWD1`` + separator + ``PWD2``) with characters that should have been
    percent-encoded, among other hosts and junk: whatever part of the URL it spills into, it
    is never in the error or in the masked URL."""
    url = "amqp://" + ",".join([*before, f"user:PWD1{separator}PWD2@{after}"])
    masked = mask_url(url)
    assert "PWD" not in masked
    try:
        parse_url(url)
    except BrokerURLError as error:
        assert "PWD" not in str(error)


# -- oslo.messaging's own reading of the same URLs is the oracle ---------------------------


def oslo_reading(url: str) -> list[tuple[str, int, str, str, str]]:
    """(host, port, user, password, vhost) per host, as oslo's rabbit driver hands them to
    kombu (``TransportURL.parse``, ``_transform_transport_url``, kombu's defaults)."""
    import kombu
    import oslo_messaging
    from oslo_config import cfg
    from oslo_messaging._drivers import impl_rabbit

    transport_url = oslo_messaging.TransportURL.parse(cfg.ConfigOpts(), url)
    seen = []
    for host in transport_url.hosts:
        kombu_url = impl_rabbit.Connection._transform_transport_url(None, transport_url, host)
        info = kombu.Connection(kombu_url).info()
        seen.append(
            (info["hostname"], info["port"], info["userid"], info["password"], info["virtual_host"])
        )
    return seen


def our_reading(url: str) -> list[tuple[str, int, str, str, str]]:
    parsed = parse_url(url)
    return [(h.host, h.port, h.username, h.password, parsed.vhost) for h in parsed.hosts]


# what survives oslo's and kombu's own quoting (kombu lowercases host names; the rabbit
# driver puts the vhost into kombu's URL unquoted and quotes credentials keeping '/')
_oslo_safe = string.ascii_letters + string.digits + "&=$-_.+!*()@:%é "
_oslo_host = st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=8)
_oslo_credential = st.text(_oslo_safe, max_size=8)


@st.composite
def oslo_netlocs(draw: st.DrawFn) -> str:
    host = draw(_oslo_host)
    port = draw(st.one_of(st.none(), ports))
    hostport = host if port is None else f"{host}:{port}"
    match draw(st.sampled_from(["none", "user", "user:password"])):
        case "none":
            return hostport
        case "user":
            return f"{quote(draw(_oslo_credential), safe='')}@{hostport}"
        case _:
            user, password = draw(_oslo_credential), draw(_oslo_credential)
            return f"{quote(user, safe='')}:{quote(password, safe='')}@{hostport}"


@settings(max_examples=60, deadline=None)
@given(
    netlocs=st.lists(oslo_netlocs(), min_size=1, max_size=4),
    vhost=st.sampled_from(["", "/", "%2F", "vh", "a.b-c_d", "a/b"]),
)
def test_every_host_reads_as_oslo_reads_it(netlocs: list[str], vhost: str) -> None:
    """Credentials, ports, defaults and the vhost of every host, against the real
    oslo.messaging + kombu: in particular a host without credentials logs in as guest
    (it does not take the previous host's)."""
    path = f"/{vhost}"
    assert our_reading("amqp://" + ",".join(netlocs) + path) == oslo_reading(
        "rabbit://" + ",".join(netlocs) + path
    )


@pytest.mark.parametrize(
    "netloc",
    [
        "u1:p1@h1:5672,h2:5673,u3:p%40@[::1]:5674",
        "[::1]:5674,u:p@h",
        "u:p@[fe80::1]",
        "h1,,h2",  # oslo skips empty entries
        "u:@h",  # an empty password is none: guest
        "u@h",  # a user name alone: password guest
        ":p@h",  # an empty user name is none: guest
        "p%3Aa:s%40c%3Ae%25t@h",
        # not "u:a%2Fb@h": oslo hands kombu the password with its '/' unencoded and kombu
        # then misreads the URL; lbactors reads a/b (test_percent_encoded_credentials...)
    ],
)
def test_edge_cases_read_as_oslo_reads_them(netloc: str) -> None:
    assert our_reading(f"amqp://{netloc}/vh") == oslo_reading(f"rabbit://{netloc}/vh")


# -- the edge cases, spelt out -------------------------------------------------------------


def test_several_hosts_each_with_its_own_credentials_or_guest() -> None:
    url = parse_url("amqp://user:pass@host1:5672,user2:p%40ss@host2:5673,host3:5674/vhost")
    assert url.hosts == (
        BrokerHost("host1", 5672, "user", "pass"),
        BrokerHost("host2", 5673, "user2", "p@ss"),
        BrokerHost("host3", 5674, "guest", "guest", credentials=False),
    )
    assert url.vhost == "vhost"
    assert url.mixed_credentials
    assert url.addresses == ["host1:5672", "host2:5673", "host3:5674"]
    assert not parse_url("amqp://a:b@h1,c:d@h2/").mixed_credentials


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("amqp://[::1]/", "::1", 5672),
        ("amqps://[::1]/", "::1", 5671),
        ("amqp://u:p@[2001:db8::17]:5673/", "2001:db8::17", 5673),
        ("amqp://u:p@::1/", "::1", 5672),  # oslo's bare IPv6 literal, no port
        ("amqp://[fe80::1%25eth0]:1/", "fe80::1%eth0", 1),
        ("amqp://h/", "h", 5672),
        ("amqps://h/", "h", 5671),
        ("AMQP://h:1/", "h", 1),
    ],
)
def test_ipv6_literals_and_default_ports(url: str, host: str, port: int) -> None:
    (broker,) = parse_url(url).hosts
    assert (broker.host, broker.port) == (host, port)
    if ":" in host:
        assert broker.address == f"[{quote(host, safe=':')}]:{port}"


@pytest.mark.parametrize(
    ("path", "vhost"),
    [("", "/"), ("/", "/"), ("/%2F", "/"), ("/%2f", "/"), ("//", "/"), ("/vh", "vh"),
     ("/a%2Fb", "a/b"), ("/a/b", "a/b"), ("/%20x", " x")],
)
def test_vhosts(path: str, vhost: str) -> None:
    assert parse_url(f"amqp://h1,h2{path}").vhost == vhost


def test_percent_encoded_credentials_are_decoded() -> None:
    (host,) = parse_url("amqp://us%3Aer:p%40ss%3Aw%2Fo%23rd%25@h/").hosts
    assert (host.username, host.password) == ("us:er", "p@ss:w/o#rd%")
    assert "p@ss" not in repr(host)  # a host's repr never shows its password


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h/", "scheme must be amqp:// or amqps://, not 'http'"),
        ("rabbit://h/", "oslo's rabbit:// is amqp://"),
        ("h:5672", "not a URL"),
        ("amqp:///", "no host name"),
        ("amqp://,,/", "no host name"),
        ("amqp://h1,h2:0/", "host 2 of 2: the port must be a number from 1 to 65535"),
        ("amqp://h1,h2:99999,h3/", "host 2 of 3: the port must be a number"),
        ("amqp://h1:/", "host: empty port"),
        ("amqp://h1,u:p@/", "host 2 of 2: no host name"),
        ("amqp://h1,h 2/", "host 2 of 2: not a host name"),
        ("amqp://[::1/", "'[' without ']'"),
        ("amqp://[h1]:1/", "not an IPv6 address"),
        ("amqp://[::1]x/", "expected ':port' after ']'"),
        ("amqp://h:1:2/", "an IPv6 address with a port goes in brackets"),
        ("amqp://user:secret/", "a user:password needs '@host' after it"),
        ("amqp://u:pa/ss@h/", "percent-encoded (%2F, %3F, %23)"),
        ("amqp://h/?ssl=1", "a query ('?...') or fragment"),
    ],
)
def test_errors_name_the_bad_part(url: str, problem: str) -> None:
    with pytest.raises(BrokerURLError) as info:
        parse_url(url)
    assert problem in str(info.value)
    assert "secret" not in str(info.value) and "pa/ss" not in str(info.value)


def test_the_configuration_names_the_bad_part_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"amqp.url": "amqp://u:SeCrEt@h1:5672,u:SeCrEt@h2:5672x/"})
    assert info.value.key == "amqp.url"
    assert "host 2 of 2: the port must be a number" in str(info.value)
    assert "SeCrEt" not in str(info.value)
    url = "amqp://u:p@h1:5672,u:p@h2:5673,h3/vh"
    assert load_config(overrides={"amqp.url": url}).amqp.url == url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://lb:pw@broker:5672/", "amqp://lb:***@broker:5672/"),
        ("amqp://a:p1@h1,h2:5673,b:p%40@[::1]:5674/v", "amqp://a:***@h1,h2:5673,b:***@[::1]:5674/v"),
        ("amqp://u@h/", "amqp://u@h/"),
        ("amqp://u:@h/%2F", "amqp://u:***@h/%2F"),
        ("amqp://u:p/w@h/", "amqp://***"),  # does not parse: masked whole
        ("nonsense u:p@h", "***"),
    ],
)
def test_mask_examples(url: str, masked: str) -> None:
    assert mask_url(url) == masked
