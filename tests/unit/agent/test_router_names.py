"""The Router driver's names and input checks, as pure data (tests/integration/agent/
test_routers.py routes real packets with it)."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest

from stratus_agent import process
from stratus_agent.drivers.network import routers
from stratus_agent.drivers.network.routers import ExternalGateway, RouterPort, Routers

ROUTER = "0b3c9a56-5a0e-4a4e-9d0b-6f1d2c3e4f50"
NET_A = "1b3c9a56-5a0e-4a4e-9d0b-6f1d2c3e4f51"
NET_B = "2b3c9a56-5a0e-4a4e-9d0b-6f1d2c3e4f52"
NET_EXT = "3b3c9a56-5a0e-4a4e-9d0b-6f1d2c3e4f53"


def port(network: str = NET_A, **changes: Any) -> RouterPort:
    made = RouterPort(network_uid=network, bridge="br-int", vlan_tag=5, mtu=1450,
                      mac="fa:16:3e:00:00:01", addresses=("10.1.0.1/24",))  # fmt: skip
    return dataclasses.replace(made, **changes) if changes else made


def test_names_fit_the_kernel_and_differ_per_node_router_and_network() -> None:
    tags = ["br-int", "stt0a1b2c3d", "node-2-int-br00"]
    uids = [str(uuid.uuid4()) for _ in range(40)]
    ports = {routers.port_name(t, r, n) for t in tags for r in uids for n in uids}
    gateways = {routers.gateway_port_name(t, r) for t in tags for r in uids}
    assert len(ports) == len(tags) * len(uids) ** 2
    assert len(gateways) == len(tags) * len(uids)
    assert not ports & gateways
    assert max(len(name) for name in ports | gateways) <= 15
    assert all(name.startswith("qr") for name in ports)
    assert all(name.startswith("qg") for name in gateways)
    assert routers.port_name("br-int", ROUTER, NET_A) == routers.port_name("br-int", ROUTER, NET_A)
    assert routers.namespace_name("a", ROUTER) != routers.namespace_name("b", ROUTER)
    assert routers.namespace_name("a", ROUTER).endswith(ROUTER)  # sweep reads it back


def test_snat_rules_are_one_per_joined_subnet_as_iptables_prints_them() -> None:
    a = port(addresses=("10.1.0.1/24", "10.9.0.1/23", "fd00::1/64"))
    b = port(NET_B, addresses=("10.2.0.1/24",))
    ext = ExternalGateway(port(NET_EXT, addresses=("172.30.0.10/24", "172.31.0.10/24"),
                               vlan_tag=None), gateway="172.30.0.1", snat=True)  # fmt: skip
    assert routers.snat_rules("qgx", [a, b], ext) == [
        "-A stratus-snat -s 10.1.0.0/24 -o qgx -j SNAT --to-source 172.30.0.10",
        "-A stratus-snat -s 10.2.0.0/24 -o qgx -j SNAT --to-source 172.30.0.10",
        "-A stratus-snat -s 10.9.0.0/23 -o qgx -j SNAT --to-source 172.30.0.10",
    ]
    assert routers.snat_rules("qgx", [a, b], dataclasses.replace(ext, snat=False)) == []
    assert routers.snat_rules("qgx", [a, b], None) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"network_uid": "not-a-uid"},
        {"mac": "FA:16:3E:00:00:01"},
        {"mac": "fa:16:3e:00:00"},
        {"addresses": ("10.1.0.300/24",)},
        {"addresses": ("10.1.0.1",)},
        {"addresses": ("10.1.0.1/33",)},
        {"bridge": "br int; rm -rf /"},
        {"bridge": "a-bridge-name-too-long"},
        {"vlan_tag": 4096},
        {"mtu": 10},
    ],
)
def test_a_bad_port_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        port(**bad)


def test_a_gateway_outside_the_external_subnets_or_snat_without_address_is_refused() -> None:
    ext = port(NET_EXT, addresses=("172.30.0.10/24",))
    with pytest.raises(ValueError, match="in none of its subnets"):
        ExternalGateway(ext, gateway="172.31.0.1", snat=False)
    with pytest.raises(ValueError):
        ExternalGateway(ext, gateway="not-an-address", snat=False)
    with pytest.raises(ValueError, match="SNAT needs"):
        ExternalGateway(port(NET_EXT, addresses=()), gateway=None, snat=True)


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Every command the driver would run (none should)."""
    ran: list[tuple[str, ...]] = []

    async def record(*argv: str, **_: Any) -> process.Output:
        ran.append(argv)
        return process.Output(0, "", "")

    monkeypatch.setattr(process, "run", record)
    return ran


@pytest.mark.parametrize(
    ("router_uid", "ports", "external"),
    [
        ("not-a-uid", [port()], None),
        (ROUTER, [port(), port()], None),  # one Network joined twice
        (ROUTER, [port(), port(NET_B)], None),  # one subnet on two Networks
        (ROUTER, [port()], ExternalGateway(port(), gateway=None, snat=False)),
        (ROUTER, [port()], ExternalGateway(port(NET_EXT), gateway=None, snat=True)),  # overlap
    ],
)
async def test_invalid_input_raises_before_any_command_runs(
    commands: list[tuple[str, ...]],
    tmp_path: Any,
    router_uid: str,
    ports: list[RouterPort],
    external: ExternalGateway | None,
) -> None:
    with pytest.raises(ValueError):
        await Routers(tmp_path, "br-int").ensure(router_uid, ports, external)
    assert commands == []


async def test_remove_of_a_non_uid_raises_before_any_command_runs(
    commands: list[tuple[str, ...]], tmp_path: Any
) -> None:
    with pytest.raises(ValueError):
        await Routers(tmp_path, "br-int").remove("../etc")
    with pytest.raises(ValueError):
        Routers(tmp_path, "bad tag")
    assert commands == []
