"""Which nodes host a Network and what each is told about the others (l2population)."""

from __future__ import annotations

from typing import Any

import pytest

from stratus_api.network_wire import DnsName
from stratus_api.v1alpha1 import Instance, Network
from stratus_operator.controllers.addressing import NetworkLedger
from stratus_operator.controllers.ipam import IpamError
from stratus_operator.controllers.node_network import (
    GuestShare,
    dns_names,
    macs_by_node,
    node_specs,
    share_of,
)
from testsupport import placed_instance

NET_UID = "0b9c8e52-5d1f-4f7e-9a0e-2f1d3c4b5a69"


def network(**spec: Any) -> Network:
    return Network.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Network",
        "metadata": {"name": "blue", "namespace": "team-a", "uid": NET_UID},
        "spec": {"subnets": [{"cidr": "10.1.0.0/24"}], **spec},
        "status": {"segmentationId": 4097},
    })  # fmt: skip


MAC_A, MAC_B, MAC_C = "52:54:00:00:00:0a", "52:54:00:00:00:0b", "52:54:00:00:00:0c"


def test_members_are_the_nodes_with_the_networks_nics_placed_on_them() -> None:
    shares = [share_of("blue", i) for i in [
        placed_instance("a", "node-1", ("blue", MAC_A), ("green", "52:54:00:00:00:99")),
        placed_instance("b", "node-2", ("blue", MAC_B)),
        placed_instance("c", "node-2", ("blue", MAC_C)),
        placed_instance("unplaced", None, ("blue", "52:54:00:00:00:01")),
        placed_instance("going", "node-3", ("blue", "52:54:00:00:00:02"), deleting=True),
    ]]  # fmt: skip
    assert shares[-1] is None  # being deleted: it brings nothing
    macs = macs_by_node()
    for share in shares:
        if share is not None:
            macs.add(share)
    assert macs.items() == {"node-1": [MAC_A], "node-2": [MAC_B, MAC_C]}
    macs.remove(shares[0])  # type: ignore[arg-type]
    macs.remove(shares[1])  # type: ignore[arg-type]
    assert macs.items() == {"node-2": [MAC_C]}  # a node whose last NIC left is gone


def test_dns_names_are_every_guests_ipv4_addresses_on_the_network_placed_or_not() -> None:
    a = Instance.model_validate({
        **placed_instance("a", None).model_dump(by_alias=True, exclude_none=True),
        "status": {"interfaces": [{"network": "blue", "ip": "10.1.0.5"},
                                  {"network": "blue", "ip": "fd00::5"},
                                  {"network": "green", "ip": "10.2.0.5"}]},
    })  # fmt: skip
    share = share_of("blue", a)
    assert share is not None and share.node is None
    names = dns_names()
    names.add(share)
    assert [(n.name, n.address) for n in names.items()] == [("a", "10.1.0.5")]


def test_dns_names_stay_sorted_and_leave_with_the_last_guest_bringing_them() -> None:
    def guest(*names: tuple[str, str]) -> GuestShare:
        return GuestShare("node-1", (), tuple(DnsName(name=n, address=a) for n, a in names))

    names, web, web_again, db = (
        dns_names(), guest(("web", "10.1.0.9")), guest(("web", "10.1.0.9")),
        guest(("db", "10.1.0.7"), ("db", "10.1.0.3")),
    )  # fmt: skip
    for share in (web, db, web_again):
        names.add(share)
    before = names.items()
    assert [(n.name, n.address) for n in before] == [
        ("db", "10.1.0.3"), ("db", "10.1.0.7"), ("web", "10.1.0.9")]  # fmt: skip
    names.remove(web)
    assert names.items() is before  # another guest still brings web's name: no change
    names.remove(web_again)
    assert [n.name for n in names.items()] == ["db", "db"]
    assert len(before) == 3  # a spec built from the earlier list keeps it as it was


def test_each_node_hears_of_the_others_with_an_endpoint_and_their_macs() -> None:
    hosting = {"node-1": [MAC_A], "node-2": [MAC_B], "node-3": [MAC_C]}
    endpoints = {"node-1": "10.250.0.1", "node-2": "10.250.0.2"}  # node-3 has no tunnel
    shares = node_specs(network(), hosting, endpoints)
    assert sorted(shares) == ["node-1", "node-2", "node-3"]
    one = shares["node-1"]
    assert (one.uid, one.segmentation_id, one.mtu) == (NET_UID, 4097, 1450)
    assert [(p.endpoint, p.macs) for p in one.peers] == [("10.250.0.2", [MAC_B])]
    assert [p.endpoint for p in shares["node-3"].peers] == ["10.250.0.1", "10.250.0.2"]


def test_provider_networks_have_no_peers_and_keep_their_vlan() -> None:
    vlan = network(type="vlan", physicalNetwork="physnet1", segmentationId=100)
    shares = node_specs(vlan, {"node-1": [MAC_A], "node-2": [MAC_B]},
                        {"node-1": "10.250.0.1", "node-2": "10.250.0.2"})  # fmt: skip
    assert all(s.peers == [] and s.segmentation_id == 100 for s in shares.values())
    assert shares["node-1"].mtu == 1500


def test_dhcp_servers_are_told_their_address_and_the_subnets_options() -> None:
    net = network(subnets=[
        {"cidr": "10.1.0.0/24", "gateway": "10.1.0.1", "dnsServers": ["10.1.0.2"]},
        {"cidr": "10.2.0.0/24", "dhcp": False},
        {"cidr": "fd00::/64"},
    ])  # fmt: skip
    shares = node_specs(net, {"node-1": [MAC_A], "node-2": [MAC_B]}, {},
                        {"node-1": {"10.1.0.0/24": "10.1.0.254"}})  # fmt: skip
    [served] = shares["node-1"].dhcp
    assert (served.cidr, served.server_address, served.gateway, served.dns_servers) == (
        "10.1.0.0/24", "10.1.0.254", "10.1.0.1", ["10.1.0.2"])  # fmt: skip
    assert shares["node-2"].dhcp == []  # no address for it (yet): no server there


def test_service_addresses_come_from_the_top_of_the_pools_and_are_kept() -> None:
    net = network(subnets=[{"cidr": "10.1.0.0/24", "gateway": "10.1.0.1",
                            "allocationPools": ["10.1.0.16/28", "10.1.0.64/30"]}])  # fmt: skip
    ledger = NetworkLedger(net.spec)
    subnet = net.spec.subnets[0]
    first = ledger.allocate_service("dhcp/node-1/10.1.0.0/24", subnet)
    second = ledger.allocate_service("dhcp/node-2/10.1.0.0/24", subnet)
    assert (first, second) == ("10.1.0.67", "10.1.0.66")
    assert ledger.allocate_service("dhcp/node-1/10.1.0.0/24", subnet) == first
    assert ledger.allocate(UID_X, 0, None, None, "spec.networks[0]").ip == "10.1.0.16"
    with pytest.raises(IpamError, match="already in use"):
        ledger.allocate("uid-y", 0, "10.1.0.67", None, "spec.networks[0]")
    ledger.allocate_service("dhcp/node-3/10.1.0.0/24", subnet)
    ledger.allocate_service("dhcp/node-4/10.1.0.0/24", subnet)  # .64, the pool's last
    assert ledger.allocate_service("dhcp/node-5/10.1.0.0/24", subnet) == "10.1.0.31"


UID_X = "uid-x"
