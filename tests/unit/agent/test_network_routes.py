"""The agent's /v1/networks routes and node network specs kept across restarts, over the
fake network driver and the OVS driver's spec files (no OVS needed without a tunnel)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from stratus_agent import main as agent_main
from stratus_agent.api.events import EventHub
from stratus_agent.api.server import create_app
from stratus_agent.drivers.compute.fake import FakeComputeDriver
from stratus_agent.drivers.network.bridge import OvsBridge
from stratus_agent.drivers.network.fake import FakeNetworkDriver
from stratus_agent.drivers.network.local_vlans import LocalVlans
from stratus_agent.drivers.network.ovs import OvsNetworkDriver
from stratus_agent.drivers.network.spec_files import SpecFiles
from stratus_agent.manager.guests import GuestManager
from stratus_api.network_wire import NodeNetworkSpec
from testsupport import AGENT_AUTH as AUTH
from testsupport import AGENT_TOKEN

Client = TestClient[Any, Any]


def network_spec(**overrides: Any) -> dict[str, Any]:
    spec = {
        "uid": str(uuid.uuid4()),
        "namespace": "tenant",
        "name": "net",
        "type": "overlay",
        "segmentationId": 1001,
        "peers": [{"endpoint": "192.0.2.2", "macs": ["52:54:00:00:00:0b"]}],
    }
    return {**spec, **overrides}


async def serve(
    tmp_path: Path, networks: FakeNetworkDriver | None, **app: Any
) -> AsyncIterator[Client]:
    hub = EventHub()
    manager = GuestManager(FakeComputeDriver(), agent_main.fake_provisioner(tmp_path), hub)
    await manager.start()
    created = create_app(manager, hub, token=AGENT_TOKEN, node="node-1", networks=networks, **app)
    async with TestClient(TestServer(created)) as client:
        yield client
    await manager.stop()


@pytest.fixture
def driver() -> FakeNetworkDriver:
    return FakeNetworkDriver()


@pytest.fixture
async def client(tmp_path: Path, driver: FakeNetworkDriver) -> AsyncIterator[Client]:
    async for served in serve(tmp_path, driver, tunnel_endpoint="192.0.2.1"):
        yield served


async def test_put_list_delete(client: Client, driver: FakeNetworkDriver) -> None:
    spec = network_spec()
    uid = spec["uid"]
    response = await client.put(f"/v1/networks/{uid}", json=spec, headers=AUTH)
    assert response.status == 200, await response.text()
    assert driver.specs[uid].peers[0].endpoint == "192.0.2.2"
    listed = await (await client.get("/v1/networks", headers=AUTH)).json()
    assert listed == {"networks": [uid]}
    first = await client.delete(f"/v1/networks/{uid}", headers=AUTH)
    again = await client.delete(f"/v1/networks/{uid}", headers=AUTH)
    assert (await first.json(), await again.json()) == ({"deleted": True}, {"deleted": False})
    assert (await (await client.get("/v1/networks", headers=AUTH)).json()) == {"networks": []}


async def test_a_change_applies_to_the_revision_held_and_else_asks_for_the_whole_spec(
    client: Client, driver: FakeNetworkDriver
) -> None:
    spec = network_spec(revision="op-1", names=[{"name": "web", "address": "10.0.0.2"}])
    uid = spec["uid"]
    change = {"uid": uid, "base": "op-1", "revision": "op-2",
              "namesAdded": [{"name": "db", "address": "10.0.0.3"}],
              "macsAdded": {"192.0.2.2": ["52:54:00:00:00:0c"]},
              "macsRemoved": {"192.0.2.2": ["52:54:00:00:00:0b"]}}  # fmt: skip
    before = await client.patch(f"/v1/networks/{uid}", json=change, headers=AUTH)
    assert before.status == 409, "a change to a spec never sent"
    assert "send the whole spec" in (await before.json())["error"]
    assert (await client.put(f"/v1/networks/{uid}", json=spec, headers=AUTH)).status == 200
    response = await client.patch(f"/v1/networks/{uid}", json=change, headers=AUTH)
    assert response.status == 200, await response.text()
    held = driver.specs[uid]
    assert held.revision == "op-2"
    assert [(n.name, n.address) for n in held.names] == [("db", "10.0.0.3"), ("web", "10.0.0.2")]
    assert held.peers[0].macs == ["52:54:00:00:00:0c"]
    again = await client.patch(f"/v1/networks/{uid}", json=change, headers=AUTH)
    assert again.status == 409, "the same change twice: the node holds op-2 now"
    stranger = {**change, "base": "op-2", "revision": "op-3",
                "macsAdded": {"198.51.100.1": ["52:54:00:00:00:0d"]}}  # fmt: skip
    refused = await client.patch(f"/v1/networks/{uid}", json=stranger, headers=AUTH)
    assert refused.status == 422 and "no peer" in (await refused.json())["error"]
    bad = {**change, "base": "op-2", "namesAdded": [{"name": "Bad_Name", "address": "10.0.0.4"}]}
    invalid = await client.patch(f"/v1/networks/{uid}", json=bad, headers=AUTH)
    assert invalid.status == 422
    assert (await invalid.json())["problems"][0].startswith("namesAdded[0].name:")
    assert driver.specs[uid].revision == "op-2"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"segmentationId": 0}, "segmentationId"),
        ({"type": "mesh"}, "type"),
        ({"peers": [{"endpoint": "node-b"}]}, "peers[0].endpoint"),
        ({"peers": [{"endpoint": "192.0.2.2", "macs": ["52:54:00:zz:00:0b"]}]}, "peers[0].macs[0]"),
        ({"mtu": 100}, "mtu"),
    ],
)
async def test_a_bad_spec_is_refused_naming_the_field(
    client: Client, driver: FakeNetworkDriver, change: dict[str, Any], field: str
) -> None:
    spec = network_spec(**change)
    response = await client.put(f"/v1/networks/{spec['uid']}", json=spec, headers=AUTH)
    body = await response.json()
    assert response.status == 422, body
    assert any(problem.startswith(f"{field}:") for problem in body["problems"]), body
    assert driver.specs == {}


async def test_the_uid_in_the_url_must_be_the_specs(client: Client) -> None:
    spec = network_spec()
    other = str(uuid.uuid4())
    response = await client.put(f"/v1/networks/{other}", json=spec, headers=AUTH)
    assert response.status == 422
    assert "does not match the URL" in (await response.json())["error"]
    bad = await client.put("/v1/networks/..%2f..%2fetc", json=spec, headers=AUTH)
    assert bad.status in (400, 404)


async def test_routes_need_the_token(client: Client) -> None:
    spec = network_spec()
    for method, path in [("GET", "/v1/networks"), ("PUT", f"/v1/networks/{spec['uid']}"),
                         ("PATCH", f"/v1/networks/{spec['uid']}"),
                         ("DELETE", f"/v1/networks/{spec['uid']}")]:  # fmt: skip
        response = await client.request(method, path, json=spec)
        assert response.status == 401, (method, path)


async def test_inventory_reports_the_tunnel_endpoint(client: Client, tmp_path: Path) -> None:
    body = await (await client.get("/v1/guests", headers=AUTH)).json()
    assert body["tunnelEndpoint"] == "192.0.2.1"
    async for plain in serve(tmp_path / "plain", None):
        body = await (await plain.get("/v1/guests", headers=AUTH)).json()
        assert body["tunnelEndpoint"] is None
        response = await plain.get("/v1/networks", headers=AUTH)
        assert response.status == 404


async def test_the_ovs_driver_keeps_specs_across_a_restart(tmp_path: Path) -> None:
    def driver() -> OvsNetworkDriver:
        # No tunnel: nothing reaches OVS, only the spec files are written and read.
        return OvsNetworkDriver(
            OvsBridge("br-unused", "netdev"),
            LocalVlans(tmp_path / "local-vlans.json"),
            specs=SpecFiles(tmp_path / "specs", NodeNetworkSpec),
        )

    first = driver()
    spec = NodeNetworkSpec.model_validate(network_spec())
    await first.ensure_network(spec)
    (tmp_path / "specs" / f"{uuid.uuid4()}.json").write_text("{not json")  # logged, left out
    restarted = driver()
    assert restarted.networks() == [spec.uid]
    assert await restarted.remove_network(spec.uid)
    assert not await restarted.remove_network(spec.uid)
    assert driver().networks() == []


def router_spec(**overrides: Any) -> dict[str, Any]:
    spec = {
        "uid": str(uuid.uuid4()),
        "namespace": "tenant",
        "name": "edge",
        "ports": [{"network": str(uuid.uuid4()), "mac": "52:54:00:00:01:01",
                   "addresses": ["10.1.0.1/24"]}],
        "external": {"network": str(uuid.uuid4()), "mac": "52:54:00:00:01:02",
                     "addresses": ["172.24.4.10/24"], "gateway": "172.24.4.1"},
    }  # fmt: skip
    return {**spec, **overrides}


async def test_routers_are_put_listed_and_deleted(
    client: Client, driver: FakeNetworkDriver
) -> None:
    spec = router_spec()
    uid = spec["uid"]
    response = await client.put(f"/v1/routers/{uid}", json=spec, headers=AUTH)
    assert response.status == 200, await response.text()
    external = driver.routers[uid].external
    assert external is not None and external.snat  # SNAT unless told otherwise
    got = await (await client.get(f"/v1/routers/{uid}", headers=AUTH)).json()
    assert got["ports"][0]["addresses"] == ["10.1.0.1/24"]
    assert await (await client.get("/v1/routers", headers=AUTH)).json() == {"routers": [uid]}
    first = await client.delete(f"/v1/routers/{uid}", headers=AUTH)
    again = await client.delete(f"/v1/routers/{uid}", headers=AUTH)
    assert (await first.json(), await again.json()) == ({"deleted": True}, {"deleted": False})
    missing = await client.get(f"/v1/routers/{uid}", headers=AUTH)
    assert missing.status == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {
                "ports": [
                    {"network": "net-a", "mac": "52:54:00:00:01:01", "addresses": ["10.1.0.1/24"]}
                ]
            },
            "ports[0].network",
        ),
        (
            {
                "ports": [
                    {
                        "network": str(uuid.uuid4()),
                        "mac": "52:54:00:00:01:01",
                        "addresses": ["10.1.0.1"],
                    }
                ]
            },
            "ports[0].addresses",
        ),
        (
            {
                "external": {
                    "network": str(uuid.uuid4()),
                    "mac": "52:54:00:00:01:02",
                    "addresses": ["172.24.4.10/24"],
                    "gateway": "gw",
                }
            },
            "external.gateway",
        ),
    ],
)
async def test_a_bad_router_spec_is_refused_naming_the_field(
    client: Client, driver: FakeNetworkDriver, change: dict[str, Any], field: str
) -> None:
    spec = router_spec(**change)
    response = await client.put(f"/v1/routers/{spec['uid']}", json=spec, headers=AUTH)
    body = await response.json()
    assert response.status == 422, body
    assert any(problem.startswith(f"{field}") for problem in body["problems"]), body
    assert driver.routers == {}


async def test_router_routes_need_the_token(client: Client) -> None:
    spec = router_spec()
    for method, path in [("GET", "/v1/routers"), ("PUT", f"/v1/routers/{spec['uid']}"),
                         ("DELETE", f"/v1/routers/{spec['uid']}")]:  # fmt: skip
        response = await client.request(method, path, json=spec)
        assert response.status == 401, (method, path)
