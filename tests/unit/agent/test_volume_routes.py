"""The agent's /v1/volumes routes, over the fake compute and volume drivers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from stratus_agent import main as agent_main
from stratus_agent.api.events import EventHub
from stratus_agent.api.server import create_app
from stratus_agent.drivers.compute.fake import FakeComputeDriver
from stratus_agent.drivers.images.fake import FakeImageStore
from stratus_agent.drivers.storage.fake_volumes import FakeVolumeDriver
from stratus_agent.manager.guests import GuestManager
from stratus_agent.manager.volumes import VolumeManager
from stratus_api.volume_wire import disk_serial
from testsupport import AGENT_AUTH as AUTH
from testsupport import AGENT_TOKEN, guest_spec, volume_spec

Client = TestClient[Any, Any]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    hub = EventHub()
    volumes = VolumeManager(
        FakeVolumeDriver(tmp_path / "volumes"), FakeImageStore(tmp_path), hub, node="node-1"
    )
    await volumes.start()
    provisioner = agent_main.fake_provisioner(tmp_path)
    provisioner.volumes = volumes
    manager = GuestManager(FakeComputeDriver(), provisioner, hub)
    await manager.start()
    app = create_app(manager, hub, token=AGENT_TOKEN, node="node-1", volumes=volumes)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
    await manager.stop()
    await volumes.stop()


async def wait_for(client: Client, path: str, state: str) -> dict[str, Any]:
    for _ in range(200):
        response = await client.get(path, headers=AUTH)
        if response.status == 200:
            body: dict[str, Any] = await response.json()
            if body["state"] == state:
                return body
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never reached {state}")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/volumes"), ("GET", "/v1/volumes/x"), ("PUT", "/v1/volumes/x"),
     ("DELETE", "/v1/volumes/x")],
)  # fmt: skip
async def test_volume_routes_need_the_token(client: Client, method: str, path: str) -> None:
    response = await client.request(method, path, headers={"Authorization": "Bearer wrong"})
    assert response.status == 401


async def test_put_get_list_and_delete(client: Client) -> None:
    spec = volume_spec()
    uid = spec["uid"]
    assert (await client.get(f"/v1/volumes/{uid}", headers=AUTH)).status == 404

    put = await client.put(f"/v1/volumes/{uid}", json=spec, headers=AUTH)
    assert put.status == 200
    assert (await put.json())["state"] in ("Creating", "Available")
    status = await wait_for(client, f"/v1/volumes/{uid}", "Available")
    assert (status["sizeBytes"], status["generation"], status["attachedTo"]) == (2**20, 1, [])

    inventory = await (await client.get("/v1/volumes", headers=AUTH)).json()
    assert inventory["node"] == "node-1"
    assert [v["uid"] for v in inventory["volumes"]] == [uid]
    assert inventory["pools"][0]["usedBytes"] == 2**20

    deleted = await client.delete(f"/v1/volumes/{uid}", headers=AUTH)
    assert deleted.status == 204
    assert (await client.get(f"/v1/volumes/{uid}", headers=AUTH)).status == 404
    assert (await client.delete(f"/v1/volumes/{uid}", headers=AUTH)).status == 204


async def test_delete_is_refused_while_a_guest_uses_the_volume(client: Client) -> None:
    spec = volume_spec()
    uid = spec["uid"]
    await client.put(f"/v1/volumes/{uid}", json=spec, headers=AUTH)
    await wait_for(client, f"/v1/volumes/{uid}", "Available")
    guest = guest_spec()
    volume = {"uid": uid, "backend": "file", "serial": disk_serial(uid)}
    guest["disks"].append({"name": "data", "volume": volume})
    await client.put(f"/v1/guests/{guest['uid']}", json=guest, headers=AUTH)
    await wait_for(client, f"/v1/guests/{guest['uid']}", "Running")

    refused = await client.delete(f"/v1/volumes/{uid}", headers=AUTH)
    body = await refused.json()
    assert refused.status == 409
    assert guest["uid"] in body["error"] and body["guests"] == [guest["uid"]]
    status = await (await client.get(f"/v1/volumes/{uid}", headers=AUTH)).json()
    assert status["attachedTo"] == [guest["uid"]]

    await client.delete(f"/v1/guests/{guest['uid']}", headers=AUTH)
    assert (await client.delete(f"/v1/volumes/{uid}", headers=AUTH)).status == 204


async def test_bad_volume_requests_say_what_is_wrong(client: Client) -> None:
    uid = volume_spec()["uid"]
    not_json = await client.put(f"/v1/volumes/{uid}", data=b"{nope", headers=AUTH)
    assert not_json.status == 400 and "not JSON" in (await not_json.json())["error"]

    spec = volume_spec(uid=uid, sizeBytes=0)
    invalid = await client.put(f"/v1/volumes/{uid}", json=spec, headers=AUTH)
    body = await invalid.json()
    assert invalid.status == 422 and any(p.startswith("sizeBytes") for p in body["problems"])

    mismatch = await client.put(f"/v1/volumes/{uid}", json=volume_spec(), headers=AUTH)
    assert mismatch.status == 422 and (await mismatch.json())["problems"][0].startswith("uid:")

    bad = volume_spec(uid="../../etc")
    refused = await client.put("/v1/volumes/..%2F..%2Fetc", json=bad, headers=AUTH)
    assert refused.status in (400, 404)
    named = await client.get("/v1/volumes/not-a-uid", headers=AUTH)
    assert named.status == 400 and "not a volume UID" in (await named.json())["error"]


async def test_an_agent_without_volumes_says_so(tmp_path: Path) -> None:
    hub = EventHub()
    manager = GuestManager(FakeComputeDriver(), agent_main.fake_provisioner(tmp_path), hub)
    app = create_app(manager, hub, token=AGENT_TOKEN, node="node-1")
    async with TestClient(TestServer(app)) as test_client:
        response = await test_client.get("/v1/volumes", headers=AUTH)
        assert response.status == 404
        assert json.loads(await response.text()) == {"error": "this agent holds no volumes"}
