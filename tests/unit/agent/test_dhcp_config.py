"""dnsmasq's configuration for one Network, as pure data: names, command line, hosts and
options files (tests/integration/agent/test_dhcp_servers.py serves real clients with it)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from stratus_agent.drivers.network import dhcp
from stratus_api.network_wire import DhcpSubnet, DnsName

NETWORK = "0b3c9a56-5a0e-4a4e-9d0b-6f1d2c3e4f50"
V4 = DhcpSubnet(cidr="10.20.0.0/24", server_address="10.20.0.2", gateway="10.20.0.1",
                dns_servers=["10.20.0.53", "192.0.2.53"], lease_seconds=3600)  # fmt: skip
ISOLATED = DhcpSubnet(cidr="10.30.0.0/23", server_address="10.30.1.2")
V6 = DhcpSubnet(cidr="fd00:20::/64", server_address="fd00:20::2", gateway="fd00:20::1")


def test_names_fit_the_kernel_and_differ_per_bridge_and_network() -> None:
    networks = [str(uuid.uuid4()) for _ in range(200)]
    bridges = ["br-int", "stt0a1b2c3d", "node-2-int-br00"]
    ports = {dhcp.port_name(bridge, uid) for bridge in bridges for uid in networks}
    assert len(ports) == len(bridges) * len(networks)
    assert max(len(port) for port in ports) <= 15
    assert dhcp.port_name("br-int", NETWORK) == dhcp.port_name("br-int", NETWORK)  # stable
    assert dhcp.namespace_name("br-a", NETWORK) != dhcp.namespace_name("br-b", NETWORK)
    assert dhcp.namespace_name("br-a", NETWORK).endswith(NETWORK)  # sweep reads it back


def test_the_command_line_serves_static_ranges_and_the_names_file_on_the_port_only() -> None:
    files = dhcp.ServerFiles(Path("/state/dhcp") / NETWORK)
    argv = dhcp.dnsmasq_argv("/usr/sbin/dnsmasq", "dhcpabc", files, [V4, ISOLATED])
    assert argv[0] == "/usr/sbin/dnsmasq"
    assert argv[1:] == [
        "--conf-file=/dev/null",
        "--no-hosts",
        "--no-resolv",
        f"--addn-hosts=/state/dhcp/{NETWORK}/names",
        "--domain-needed",
        "--bogus-priv",
        "--interface=dhcpabc",
        "--except-interface=lo",
        "--bind-interfaces",
        f"--pid-file=/state/dhcp/{NETWORK}/dnsmasq.pid",
        f"--dhcp-leasefile=/state/dhcp/{NETWORK}/leases",
        f"--dhcp-hostsfile=/state/dhcp/{NETWORK}/hosts",
        f"--dhcp-optsfile=/state/dhcp/{NETWORK}/opts",
        f"--log-facility=/state/dhcp/{NETWORK}/dnsmasq.log",
        "--quiet-dhcp",
        "--dhcp-range=set:subnet0,10.20.0.0,static,255.255.255.0,3600",
        "--dhcp-range=set:subnet1,10.30.0.0,static,255.255.254.0,86400",
    ]
    assert "--dhcp-authoritative" not in argv  # it would NAK other nodes' guests


def test_options_per_subnet_with_no_router_where_there_is_no_gateway() -> None:
    # The server itself first: it answers the Network's names, then the subnet's own.
    assert dhcp.opts_file([V4, ISOLATED], 1450, "shop").splitlines() == [
        "tag:subnet0,option:router,10.20.0.1",
        "tag:subnet0,option:dns-server,10.20.0.2,10.20.0.53,192.0.2.53",
        "tag:subnet0,option:domain-search,shop.stratus.internal",
        "tag:subnet0,option:mtu,1450",
        "tag:subnet1,option:router",  # empty: dnsmasq would offer itself as the router
        "tag:subnet1,option:dns-server,10.30.1.2",
        "tag:subnet1,option:domain-search,shop.stratus.internal",
        "tag:subnet1,option:mtu,1450",
    ]


def test_names_file_serves_each_instance_by_name_and_in_its_namespace_zone() -> None:
    names = [DnsName(name="web", address="10.20.0.11"), DnsName(name="db", address="10.20.0.12"),
             DnsName(name="web", address="10.20.0.11")]  # fmt: skip
    assert dhcp.names_file(names, "shop") == (
        "10.20.0.11 web web.shop.stratus.internal\n10.20.0.12 db db.shop.stratus.internal\n"
    )


def test_hosts_file_is_sorted_short_named_and_ipv4_only() -> None:
    hosts = [
        dhcp.DhcpHost(mac="52:54:00:00:00:02", address="10.20.0.12", hostname="vm-b.example.org"),
        dhcp.DhcpHost(mac="52:54:00:00:00:01", address="10.20.0.11"),
        dhcp.DhcpHost(mac="52:54:00:00:00:01", address="10.20.0.11"),  # twice: once in the file
        dhcp.DhcpHost(mac="52:54:00:00:00:03", address="fd00:20::12", hostname="vm-c"),
    ]
    assert dhcp.hosts_file(hosts) == (
        "52:54:00:00:00:01,10.20.0.11\n52:54:00:00:00:02,10.20.0.12,vm-b\n"
    )
    assert dhcp.hosts_file([]) == ""


def test_ipv6_subnets_are_left_out_and_server_addresses_carry_the_prefix() -> None:
    served = dhcp.ipv4_subnets([V6, V4, ISOLATED])
    assert served == [V4, ISOLATED]
    assert dhcp.server_addresses(served) == {"10.20.0.2/24", "10.30.1.2/23"}


@pytest.mark.parametrize(
    "fields",
    [
        {"mac": "52:54:00:00:00:0G", "address": "10.0.0.1"},
        {"mac": "52:54:00:AA:00:01", "address": "10.0.0.1"},
        {"mac": "52:54:00:00:00:01", "address": "10.0.0.1\ndhcp-range=x"},
        {"mac": "52:54:00:00:00:01", "address": "10.0.0.1", "hostname": "a,b"},
        {"mac": "52:54:00:00:00:01", "address": "10.0.0.1", "hostname": "-bad"},
    ],
)
def test_a_host_that_would_break_the_hosts_file_is_refused(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        dhcp.DhcpHost(**fields)


def test_options_and_addresses_that_are_no_addresses_are_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("not in 10.20.0.0/24")):
        dhcp.server_addresses([V4.model_copy(update={"server_address": "10.21.0.2"})])
    with pytest.raises(ValueError):
        dhcp.opts_file([V4.model_copy(update={"dns_servers": ["1.1.1.1\nx"]})], 1450, "shop")
    with pytest.raises(ValueError, match="not a DNS zone"):
        dhcp.opts_file([V4], 1450, "shop\ndhcp-script=/tmp/x")
    with pytest.raises(ValueError, match="not a DNS zone"):
        dhcp.names_file([DnsName(name="web", address="10.20.0.11")], "a b")
