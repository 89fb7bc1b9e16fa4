"""The agent's /v1/snapshots routes, and snapshots in GET /v1/volumes, over the fake compute
and volume drivers."""

from __future__ import annotations

import asyncio
import json
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
from stratus_agent.drivers.images.fake import FakeImageStore
from stratus_agent.drivers.storage.fake_volumes import FakeVolumeDriver
from stratus_agent.manager.guests import GuestManager
from stratus_agent.manager.sequence import SequenceClock
from stratus_agent.manager.snapshots import SnapshotManager
from stratus_agent.manager.volumes import VolumeManager
from stratus_api.volume_wire import disk_serial
from testsupport import AGENT_AUTH as AUTH
from testsupport import AGENT_TOKEN, guest_spec, volume_spec

Client = TestClient[Any, Any]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    hub, sequence = EventHub(), SequenceClock()
    driver = FakeVolumeDriver(tmp_path / "volumes")
    volumes = VolumeManager(driver, FakeImageStore(tmp_path), hub, node="node-1", sequence=sequence)
    snapshots = SnapshotManager(driver, volumes, hub, sequence=sequence)
    await volumes.start()
    await snapshots.start()
    provisioner = agent_main.fake_provisioner(tmp_path)
    provisioner.volumes = volumes
    manager = GuestManager(FakeComputeDriver(), provisioner, hub, sequence=sequence)
    await manager.start()
    app = create_app(
        manager, hub, token=AGENT_TOKEN, node="node-1", volumes=volumes, snapshots=snapshots
    )
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
    await manager.stop()
    await snapshots.stop()
    await volumes.stop()


def snapshot_spec(volume: str, **overrides: Any) -> dict[str, Any]:
    """A NodeSnapshotSpec in wire form."""
    spec = {"uid": str(uuid.uuid4()), "name": "snap", "namespace": "team-a", "generation": 1,
            "backend": "file", "volume": volume}  # fmt: skip
    return {**spec, **overrides}


async def wait_for(client: Client, path: str, state: str) -> dict[str, Any]:
    for _ in range(200):
        response = await client.get(path, headers=AUTH)
        if response.status == 200:
            body: dict[str, Any] = await response.json()
            if body["state"] == state:
                return body
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never reached {state}")


async def a_volume(client: Client, **overrides: Any) -> str:
    spec = volume_spec(**overrides)
    await client.put(f"/v1/volumes/{spec['uid']}", json=spec, headers=AUTH)
    await wait_for(client, f"/v1/volumes/{spec['uid']}", "Available")
    return str(spec["uid"])


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_snapshot_routes_need_the_token(client: Client, method: str) -> None:
    path = f"/v1/snapshots/{uuid.uuid4()}"
    response = await client.request(method, path, headers={"Authorization": "Bearer wrong"})
    assert response.status == 401


async def test_put_get_list_delete_and_restore(client: Client) -> None:
    volume = await a_volume(client, sizeBytes=2 * 2**20)
    spec = snapshot_spec(volume)
    uid = spec["uid"]
    assert (await client.get(f"/v1/snapshots/{uid}", headers=AUTH)).status == 404

    put = await client.put(f"/v1/snapshots/{uid}", json=spec, headers=AUTH)
    assert put.status == 200
    assert (await put.json())["state"] in ("Creating", "Ready")
    status = await wait_for(client, f"/v1/snapshots/{uid}", "Ready")
    assert (status["volume"], status["sizeBytes"], status["generation"]) == (volume, 2**21, 1)

    inventory = await (await client.get("/v1/volumes", headers=AUTH)).json()
    assert [s["uid"] for s in inventory["snapshots"]] == [uid]
    assert [v["uid"] for v in inventory["volumes"]] == [volume]
    assert inventory["pools"][0]["usedBytes"] == 2 * 2**21  # the volume and its snapshot

    restored = await a_volume(client, sizeBytes=2**21, source={"snapshot": uid})
    got = await (await client.get(f"/v1/volumes/{restored}", headers=AUTH)).json()
    assert got["sizeBytes"] == 2**21

    deleted = await client.delete(f"/v1/snapshots/{uid}", headers=AUTH)
    assert deleted.status == 204
    assert (await client.get(f"/v1/snapshots/{uid}", headers=AUTH)).status == 404
    assert (await client.delete(f"/v1/snapshots/{uid}", headers=AUTH)).status == 204


async def test_a_volume_a_guest_uses_fails_the_snapshot_until_released(client: Client) -> None:
    volume = await a_volume(client)
    guest = guest_spec()
    disk = {"uid": volume, "backend": "file", "serial": disk_serial(volume)}
    guest["disks"].append({"name": "data", "volume": disk})
    await client.put(f"/v1/guests/{guest['uid']}", json=guest, headers=AUTH)
    await wait_for(client, f"/v1/guests/{guest['uid']}", "Running")

    spec = snapshot_spec(volume)
    put = await client.put(f"/v1/snapshots/{spec['uid']}", json=spec, headers=AUTH)
    assert put.status == 200
    failed = await wait_for(client, f"/v1/snapshots/{spec['uid']}", "Failed")
    assert failed["reason"] == "VolumeInUse" and "snapshotted while detached" in failed["message"]

    await client.delete(f"/v1/guests/{guest['uid']}", headers=AUTH)
    await client.put(f"/v1/snapshots/{spec['uid']}", json=spec, headers=AUTH)
    await wait_for(client, f"/v1/snapshots/{spec['uid']}", "Ready")


async def test_bad_snapshot_requests_say_what_is_wrong(client: Client) -> None:
    volume = str(uuid.uuid4())
    uid = snapshot_spec(volume)["uid"]
    not_json = await client.put(f"/v1/snapshots/{uid}", data=b"{nope", headers=AUTH)
    assert not_json.status == 400 and "not JSON" in (await not_json.json())["error"]

    invalid = await client.put(
        f"/v1/snapshots/{uid}", json=snapshot_spec("not-a-uid", uid=uid), headers=AUTH
    )
    body = await invalid.json()
    assert invalid.status == 422 and any(p.startswith("volume") for p in body["problems"])
    assert body["error"].startswith("invalid snapshot spec")

    mismatch = await client.put(f"/v1/snapshots/{uid}", json=snapshot_spec(volume), headers=AUTH)
    assert mismatch.status == 422 and (await mismatch.json())["problems"][0].startswith("uid:")

    bad = snapshot_spec(volume, uid="../../etc")
    refused = await client.put("/v1/snapshots/..%2F..%2Fetc", json=bad, headers=AUTH)
    assert refused.status in (400, 404)
    for method in ("GET", "DELETE"):
        named = await client.request(method, "/v1/snapshots/not-a-uid", headers=AUTH)
        assert named.status == 400 and "not a snapshot UID" in (await named.json())["error"]


async def test_an_agent_without_snapshots_says_so(tmp_path: Path) -> None:
    hub = EventHub()
    manager = GuestManager(FakeComputeDriver(), agent_main.fake_provisioner(tmp_path), hub)
    volumes = VolumeManager(
        FakeVolumeDriver(tmp_path / "volumes"), FakeImageStore(tmp_path), hub, node="node-1"
    )
    app = create_app(manager, hub, token=AGENT_TOKEN, node="node-1", volumes=volumes)
    async with TestClient(TestServer(app)) as test_client:
        response = await test_client.get(f"/v1/snapshots/{uuid.uuid4()}", headers=AUTH)
        assert response.status == 404
        assert json.loads(await response.text()) == {"error": "this agent holds no snapshots"}
        inventory = await (await test_client.get("/v1/volumes", headers=AUTH)).json()
        assert inventory["snapshots"] == []
