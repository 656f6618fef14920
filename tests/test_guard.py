"""The SSRF guard: IPv6 forms that carry an IPv4 address."""

from __future__ import annotations

import pytest

from imgcrawl.guard import is_public

# -- is_public: IPv6 forms that carry an IPv4 address --------------------------------------

PRIVATE_INNER, PUBLIC_INNER = "127.0.0.1", "93.184.216.34"  # 7f00:1, 5db8:d822


@pytest.mark.parametrize(("form", "address_of"), [
    ("IPv4-mapped", "::ffff:{}".format),
    ("IPv4-compatible", "::{}".format),
    ("SIIT", "::ffff:0:{}".format),
    ("NAT64 well-known prefix", "64:ff9b::{}".format),
    ("6to4", lambda v4: "2002:{:02x}{:02x}:{:02x}{:02x}::1".format(*map(int, v4.split(".")))),
])
@pytest.mark.parametrize("inner", [PRIVATE_INNER, "10.1.2.3", "169.254.169.254", "100.64.0.1",
                                   "0.0.0.0", "224.0.0.1", PUBLIC_INNER])
def test_an_ipv6_address_carrying_an_ipv4_one_is_judged_by_it(form, address_of, inner):
    assert is_public(address_of(inner)) is (inner == PUBLIC_INNER)


def teredo(server: str, client: str) -> str:
    """2001:0:<server>:<flags>:<port ^ ffff>:<client ^ ffffffff> (RFC 4380)."""
    s = [int(x) for x in server.split(".")]
    c = [int(x) ^ 0xFF for x in client.split(".")]
    return f"2001:0:{s[0]:02x}{s[1]:02x}:{s[2]:02x}{s[3]:02x}:8000:63bf:{c[0]:02x}{c[1]:02x}:{c[2]:02x}{c[3]:02x}"


@pytest.mark.parametrize("address", [
    "64:ff9b:1::a00:1", "64:ff9b:1::5db8:d822",  # local-use NAT64: the operator's own network
    "fec0::1", "fec0::5db8:d822",  # site-local
    teredo(PUBLIC_INNER, PRIVATE_INNER), teredo(PRIVATE_INNER, PUBLIC_INNER),
    teredo(PUBLIC_INNER, "10.0.0.1"), teredo(PUBLIC_INNER, PUBLIC_INNER),
])
def test_never_public_whatever_they_carry(address):
    assert is_public(address) is False


@pytest.mark.parametrize("address", [
    "2606:4700::1111", "2001:4860:4860::8888", "2a00:1450:4001:80b::200e", "2002:5db8:d822::1",
    "64:ff9b::5db8:d822", "::ffff:93.184.216.34",
])
def test_plain_public_ipv6_stays_public(address):
    assert is_public(address) is True


def test_teredo_helper_builds_what_ipaddress_reads():
    import ipaddress

    server, client = ipaddress.ip_address(teredo(PUBLIC_INNER, "10.0.0.1")).teredo
    assert (str(server), str(client)) == (PUBLIC_INNER, "10.0.0.1")
