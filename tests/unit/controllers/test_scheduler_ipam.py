"""Placement and addresses, as plain functions."""

from __future__ import annotations

import pytest

from stratus_api.v1alpha1.network import NetworkSpec
from stratus_api.v1alpha1.volume import VolumeBackend
from stratus_operator.controllers import addressing, ipam, scheduler
from stratus_operator.controllers.addressing import Address, NetworkLedger
from stratus_operator.controllers.scheduler import Candidate, Request


def node(name: str, **kw: object) -> Candidate:
    values: dict[str, object] = {"labels": {}, "ready": True, "schedulable": True,
                                 "cpu_free": 4, "memory_free_bytes": 8 * 2**30}  # fmt: skip
    values.update(kw)
    return Candidate(name=name, **values)  # type: ignore[arg-type]


def test_picks_the_node_with_most_free_memory_then_by_name() -> None:
    request = Request(cpu=1, memory_bytes=2**30, node_selector={})
    nodes = [node("b"), node("a"), node("c", memory_free_bytes=2 * 2**30)]
    assert scheduler.pick(request, nodes).name == "a"


def test_says_why_nothing_fits() -> None:
    request = Request(cpu=2, memory_bytes=4 * 2**30, node_selector={"zone": "east"})
    nodes = [
        node("down", ready=False),
        node("drained", schedulable=False),
        node("west", labels={"zone": "west"}),
        node("small", labels={"zone": "east"}, cpu_free=1),
        node("full", labels={"zone": "east"}, memory_free_bytes=2**30),
    ]
    with pytest.raises(scheduler.Unschedulable) as caught:
        scheduler.pick(request, nodes)
    assert str(caught.value) == (
        "0/5 Hypervisors fit: 1 nodeSelector does not match, 1 not Ready, "
        "1 not enough free CPU, 1 not enough free memory, 1 not schedulable"
    )
    with pytest.raises(scheduler.Unschedulable, match="no Hypervisors registered"):
        scheduler.pick(request, [])


def test_unbound_lvm_volumes_need_a_node_serving_lvm() -> None:
    lvm = frozenset({VolumeBackend.LVM})
    request = Request(cpu=1, memory_bytes=2**30, node_selector={}, backends=lvm)
    roomy = node("roomy", memory_free_bytes=64 * 2**30)
    serving = node("serving", backends=frozenset({VolumeBackend.FILE, VolumeBackend.LVM}))
    assert scheduler.pick(request, [roomy, serving]).name == "serving"
    with pytest.raises(scheduler.Unschedulable) as caught:
        scheduler.pick(request, [roomy])
    assert str(caught.value) == "0/1 Hypervisors fit: 1 serving no lvm volumes"


NET = NetworkSpec.model_validate(
    {"subnets": [{"cidr": "10.0.0.0/29", "gateway": "10.0.0.1", "dnsServers": ["10.0.0.1"]}]}
)


def ledger(spec: NetworkSpec, *used: str) -> NetworkLedger:
    """A Network's ledger with `used` held by other Instances."""
    book = NetworkLedger(spec)
    for index, ip in enumerate(used):
        book.hold(f"other-{index}", Address(ip, f"52:54:00:00:00:{index:02x}"))
    return book


def test_allocates_in_order_skipping_reserved_and_used() -> None:
    first = ledger(NET).allocate("vm", 0, None, None, "spec.networks[0]")
    allocation = addressing.describe(NET, first.ip)
    assert (first.ip, allocation.prefix_length, allocation.gateway,
            allocation.dns_servers) == ("10.0.0.2", 29, "10.0.0.1", ("10.0.0.1",))  # fmt: skip
    assert ledger(NET, "10.0.0.2", "10.0.0.3").allocate("vm", 0, None, None, "f").ip == "10.0.0.4"


def test_one_allocation_per_nic_and_released_addresses_come_back() -> None:
    book = ledger(NET)
    first = book.allocate("vm", 0, None, None, "f")
    assert book.allocate("vm", 0, None, None, "f") == first  # held, not allocated again
    book.release("vm")
    assert book.held("vm") is None and len(book) == 0


def test_runs_out_with_a_clear_error() -> None:
    book = ledger(NET, *(f"10.0.0.{i}" for i in range(2, 7)))
    with pytest.raises(ipam.IpamError, match=r"no free address left in 10\.0\.0\.0/29"):
        book.allocate("vm", 0, None, None, "spec.networks[0]")


def test_a_full_subnet_overflows_into_the_next() -> None:
    two = NetworkSpec.model_validate({"subnets": [
        {"cidr": "10.0.0.0/30"},
        {"cidr": "10.0.1.0/29", "gateway": "10.0.1.1", "dnsServers": ["10.0.1.1"]},
    ]})  # fmt: skip
    book = NetworkLedger(two)
    ips = [book.allocate(f"vm-{i}", 0, None, None, "spec.networks[0]").ip for i in range(7)]
    assert ips == ["10.0.0.1", "10.0.0.2", *(f"10.0.1.{i}" for i in range(2, 7))]
    # Each address is described by its own subnet: prefix, gateway and DNS servers.
    assert addressing.describe(two, "10.0.1.2") == ipam.Allocation(
        "10.0.1.2", 29, "10.0.1.1", ("10.0.1.1",)
    )
    assert addressing.describe(two, "10.0.0.1").gateway is None
    with pytest.raises(ipam.IpamError) as full:
        book.allocate("vm-7", 0, None, None, "spec.networks[0]")
    assert str(full.value) == "no free address left in 10.0.0.0/30, 10.0.1.0/29"
    assert full.value.field == "spec.networks[0].ip"


def test_pools_bound_the_automatic_addresses() -> None:
    pooled = NetworkSpec.model_validate(
        {"subnets": [{"cidr": "10.0.0.0/24", "allocationPools": ["10.0.0.128/30"]}]}
    )
    # A pool is a range of the subnet, not a subnet: its first address is usable.
    assert ledger(pooled).allocate("vm", 0, None, None, "f").ip == "10.0.0.128"
    assert ledger(pooled).allocate("vm", 0, "10.0.0.9", None, "f").ip == "10.0.0.9"


@pytest.mark.parametrize(
    ("fixed", "used", "message"),
    [
        ("10.0.0.1", set(), "is the gateway"),
        ("10.0.0.7", set(), "broadcast"),
        ("10.0.1.5", set(), "outside the network's subnets"),
        ("10.0.0.5", {"10.0.0.5"}, "already in use"),
    ],
)
def test_fixed_addresses_are_checked(fixed: str, used: set[str], message: str) -> None:
    with pytest.raises(ipam.IpamError, match=message) as caught:
        ledger(NET, *used).allocate("vm", 1, fixed, None, "spec.networks[1]")
    assert caught.value.field == "spec.networks[1].ip"


def test_macs_are_stable_local_and_avoid_collisions() -> None:
    uid = "6295dea5-ce37-4888-9124-91b65ededffc"
    mac = ipam.mac_for(uid, 0, set())
    assert mac == ipam.mac_for(uid, 0, set()) and mac.startswith("52:54:00:")
    assert ipam.mac_for(uid, 1, set()) != mac
    assert ipam.mac_for(uid, 0, {mac}) != mac


def test_provider_networks_need_a_node_with_their_physical_network() -> None:
    request = Request(cpu=1, memory_bytes=2**30, node_selector={},
                      physical_networks=frozenset({"physnet1"}))  # fmt: skip
    roomy = node("roomy", memory_free_bytes=64 * 2**30)
    wired = node("wired", physical_networks=frozenset({"physnet1", "physnet2"}))
    assert scheduler.pick(request, [roomy, wired]).name == "wired"
    with pytest.raises(scheduler.Unschedulable) as caught:
        scheduler.pick(request, [roomy])
    assert str(caught.value) == "0/1 Hypervisors fit: 1 without physical network physnet1"
