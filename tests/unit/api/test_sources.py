"""The image source policy: URL checks, resolved-address checks, redaction."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from stratus_api.sources import SourcePolicy, SourceRefused, check_address, check_url, redact

DEFAULT = SourcePolicy()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://images.example/d.qcow2", ("images.example", 80)),
        ("https://Images.Example/d.qcow2", ("images.example", 443)),
        ("http://user:pw@images.example:8080/d", ("images.example", 8080)),
        ("http://10.0.0.5/d", ("10.0.0.5", 80)),  # private networks are not refused by default
        ("http://[2001:db8::1]:8080/d", ("2001:db8::1", 8080)),
    ],
)
def test_allowed_urls_give_host_and_port(url: str, expected: tuple[str, int]) -> None:
    assert check_url(DEFAULT, url) == expected


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://images.example/d", "scheme 'ftp' is not allowed"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("http:///d", "no host"),
        ("http://images.example:99999/d", "invalid port"),
        ("http://127.0.0.1/d", "refused network 127.0.0.0/8"),
        ("http://127.8.9.10:8000/d", "refused network 127.0.0.0/8"),
        ("http://169.254.169.254/latest/meta-data", "refused network 169.254.0.0/16"),
        ("http://[::1]/d", "refused network ::1/128"),
        ("http://[fe80::1]/d", "refused network fe80::/10"),
        ("http://0.0.0.0/d", "refused network 0.0.0.0/8"),
        ("http://[::ffff:169.254.169.254]/d", "refused network 169.254.0.0/16"),
        ("http://224.0.0.1/d", "refused network 224.0.0.0/4"),
        ("http://[", "not a URL"),
    ],
)
def test_refused_urls_say_which_rule(url: str, why: str) -> None:
    with pytest.raises(SourceRefused, match=why.replace(".", r"\.").replace("[", r"\[")):
        check_url(DEFAULT, url)


def test_ipv4_mapped_addresses_are_checked_as_ipv4_with_any_network_list() -> None:
    only_v4 = SourcePolicy(refused_networks=("10.0.0.0/8",))
    with pytest.raises(SourceRefused, match=r"10\.0\.0\.0/8"):
        check_url(only_v4, "http://[::ffff:10.1.2.3]/d")
    with pytest.raises(SourceRefused):
        check_address(only_v4, ipaddress.ip_address("::ffff:10.1.2.3"), "name.example", 80)
    check_address(only_v4, ipaddress.ip_address("::ffff:192.0.2.1"), "name.example", 80)


def test_allowed_endpoints_open_exact_host_and_port_only() -> None:
    policy = SourcePolicy(allowed_endpoints=("127.0.0.1:8480", "LocalHost:8480", "[::1]:8480"))
    assert policy.allowed_endpoints == ("127.0.0.1:8480", "localhost:8480", "[::1]:8480")
    assert check_url(policy, "http://127.0.0.1:8480/i.qcow2") == ("127.0.0.1", 8480)
    assert check_url(policy, "http://[::1]:8480/i.qcow2") == ("::1", 8480)
    with pytest.raises(SourceRefused):
        check_url(policy, "http://127.0.0.1:8481/i.qcow2")
    # A name is checked by what it resolves to: the endpoint by name or by address.
    loopback = ipaddress.ip_address("127.0.0.1")
    check_address(policy, loopback, "localhost", 8480)
    check_address(policy, loopback, "anything.example", 8480)  # resolves to the endpoint
    with pytest.raises(SourceRefused, match=r"anything\.example:8481"):
        check_address(policy, loopback, "anything.example", 8481)


def test_refused_ports_win_over_everything() -> None:
    policy = SourcePolicy(allowed_endpoints=("127.0.0.1:8441",)).refusing_ports(8441, 0)
    assert policy.refused_ports == (8441,)
    assert policy.refusing_ports(8441).refused_ports == (8441,)  # no duplicates
    with pytest.raises(SourceRefused, match="own service ports"):
        check_url(policy, "http://127.0.0.1:8441/x")
    with pytest.raises(SourceRefused, match="own service ports"):
        check_url(policy, "http://images.example:8441/x")
    with pytest.raises(SourceRefused, match="own ports"):
        check_address(policy, ipaddress.ip_address("192.0.2.1"), "images.example", 8441)


def test_allowed_hosts_and_ports_narrow_the_policy() -> None:
    policy = SourcePolicy(allowed_hosts=("Images.Example",), allowed_ports=(443,))
    assert check_url(policy, "https://images.example/d") == ("images.example", 443)
    with pytest.raises(SourceRefused, match="not in the allowed hosts"):
        check_url(policy, "https://other.example/d")
    with pytest.raises(SourceRefused, match="not in the allowed ports"):
        check_url(policy, "http://images.example/d")


@pytest.mark.parametrize(
    "settings",
    [
        {"refused_networks": ("not-a-network",)},
        {"refused_ports": (0,)},
        {"allowed_ports": (70000,)},
        {"allowed_endpoints": ("no-port",)},
        {"unknown": True},
    ],
)
def test_invalid_policies_are_refused_at_load(settings: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SourcePolicy.model_validate(settings)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://alice:hunter2@images.example/d", "http://***@images.example/d"),
        ("https://token@images.example:8443/d?x=1", "https://***@images.example:8443/d?***"),
        # A signed URL's query is its credential.
        (
            "https://bucket.example/i.qcow2?X-Amz-Signature=abc&X-Amz-Expires=60",
            "https://bucket.example/i.qcow2?***",
        ),
        ("http://a@b@images.example/d", "http://***@images.example/d"),
        ("http://images.example/a@b", "http://images.example/a@b"),
        ("http://[::1", "(unparseable URL)"),
    ],
)
def test_redact_hides_user_and_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_refusal_messages_never_show_credentials() -> None:
    with pytest.raises(SourceRefused) as caught:
        check_url(DEFAULT, "ftp://alice:hunter2@images.example/d")
    assert "hunter2" not in str(caught.value) and "alice" not in str(caught.value)
