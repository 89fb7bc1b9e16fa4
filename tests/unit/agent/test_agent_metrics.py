"""The agent's /metrics with the fake compute driver: per-guest series labelled by their
Instance, node capacity and allocation, the image cache, names promtool accepts."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from stratus_agent import base
from stratus_agent import main as agent_main
from stratus_agent.api import metrics as agent_metrics
from stratus_agent.api.events import EventHub
from stratus_agent.api.server import create_app
from stratus_agent.drivers.compute.fake import FakeComputeDriver
from stratus_agent.manager.guests import GuestManager
from stratus_api.guest import GuestSpec
from testsupport import AGENT_AUTH, AGENT_TOKEN, Samples, guest_spec, sample, samples

Client = TestClient[Any, Any]
GiB = 2**30


class Agent:
    def __init__(self, client: Client, compute: FakeComputeDriver) -> None:
        self.client, self.compute = client, compute

    async def put(self, spec: dict[str, Any]) -> None:
        response = await self.client.put(f"/v1/guests/{spec['uid']}", json=spec, headers=AGENT_AUTH)
        assert response.status == 202, await response.text()

    async def text(self) -> str:
        response = await self.client.get("/metrics", headers=AGENT_AUTH)
        assert response.status == 200
        return await response.text()

    async def scrape(self) -> Samples:
        return samples(await self.text())

    async def until_state(self, uid: str, state: str) -> None:
        for _ in range(200):
            response = await self.client.get(f"/v1/guests/{uid}", headers=AGENT_AUTH)
            if response.status == 200 and (await response.json())["state"] == state:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"guest {uid} never reached {state}")


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    compute = FakeComputeDriver(cpu=8, memory_bytes=16 * GiB)
    hub = EventHub()
    provisioner = agent_main.fake_provisioner(tmp_path)
    manager = GuestManager(compute, provisioner, hub)
    await manager.start()
    app = create_app(manager, hub, token=AGENT_TOKEN, node="node-1", images=provisioner.images)
    async with TestClient(TestServer(app)) as client:
        yield Agent(client, compute)
    await manager.stop()


def disk(device: str, n: int) -> base.DiskStats:
    return base.DiskStats(device=device, read_bytes=n, write_bytes=2 * n, read_requests=3,
                          write_requests=4, read_seconds=0.5, write_seconds=0.25)  # fmt: skip


def nic(index: int, n: int) -> base.NicStats:
    return base.NicStats(index=index, receive_bytes=n, transmit_bytes=2 * n, receive_packets=3,
                         transmit_packets=4, receive_errors=0, transmit_errors=0,
                         receive_drops=1, transmit_drops=0)  # fmt: skip


async def two_guests(agent: Agent) -> tuple[dict[str, Any], dict[str, Any]]:
    """`web` (team-a) running with a disk and a NIC counting, `db` (team-b) paused."""
    web = guest_spec(name="web", namespace="team-a", cpu=2, memoryBytes=GiB)
    db = guest_spec(name="db", namespace="team-b", power="Paused")
    for spec, state in ((web, "Running"), (db, "Paused")):
        await agent.put(spec)
        await agent.until_state(spec["uid"], state)
    agent.compute.io(web["uid"], disks=(disk("vda", 4096), disk("hda", 512)), nics=(nic(0, 100),))
    return web, db


def of(spec: dict[str, Any]) -> dict[str, str]:
    return {"namespace": spec["namespace"], "name": spec["name"], "uid": spec["uid"]}


async def test_promtool_accepts_the_exposition(agent: Agent) -> None:
    await two_guests(agent)
    text = await agent.text()
    for name in ("stratus_guest_vcpu_seconds_total", "stratus_guest_disk_read_bytes_total",
                 "stratus_guest_network_receive_drops_total", "stratus_node_capacity_vcpus",
                 "stratus_image_cache_hits_total", "stratus_guest_state"):  # fmt: skip
        assert f"\n{name}{{" in text or f"\n{name} " in text, name
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, check=False, timeout=60)  # fmt: skip
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


async def test_a_guests_series_carry_its_instance_and_vanish_when_it_is_deleted(
    agent: Agent,
) -> None:
    web, db = await two_guests(agent)
    found = await agent.scrape()
    assert sample(found, "stratus_guest_state", **of(web), state="running") == 1
    assert sample(found, "stratus_guest_state", **of(db), state="paused") == 1
    assert sample(found, "stratus_guest_vcpus", **of(web)) == 2
    assert sample(found, "stratus_guest_memory_balloon_bytes", **of(web)) == GiB
    assert sample(found, "stratus_guest_vcpu_seconds_total", **of(web)) == 0  # it did nothing
    assert sample(found, "stratus_guest_disk_read_bytes_total", **of(web), device="vda") == 4096
    assert sample(found, "stratus_guest_disk_write_seconds_total", **of(web), device="hda") == 0.25
    assert sample(found, "stratus_guest_network_transmit_bytes_total", **of(web),
                  interface="0") == 200  # fmt: skip
    # One state series per guest, kube-state-metrics style.
    states = [labels for (name, labels) in found if name == "stratus_guest_state"]
    assert len(states) == 2

    assert (await agent.client.delete(f"/v1/guests/{web['uid']}", headers=AGENT_AUTH)).status == 200
    left = await agent.scrape()
    assert [key for key in left if ("uid", web["uid"]) in key[1]] == []
    assert sample(left, "stratus_guest_state", **of(db), state="paused") == 1


async def test_a_stopped_guest_keeps_its_state_and_loses_its_counters(agent: Agent) -> None:
    web, _ = await two_guests(agent)
    await agent.put({**web, "generation": 2, "power": "Stopped"})
    await agent.until_state(web["uid"], "Stopped")
    found = await agent.scrape()
    assert sample(found, "stratus_guest_state", **of(web), state="shutoff") == 1
    assert sample(found, "stratus_guest_vcpus", **of(web)) == 2
    for name in ("stratus_guest_vcpu_seconds_total", "stratus_guest_disk_read_bytes_total",
                 "stratus_guest_memory_balloon_bytes"):  # fmt: skip
        assert [k for k in found if k[0] == name and ("uid", web["uid"]) in k[1]] == [], name


async def test_node_capacity_and_what_its_guests_are_given(agent: Agent) -> None:
    await two_guests(agent)  # 2 vCPUs + 1 GiB, and the spec default 1 vCPU + 256 MiB
    found = await agent.scrape()
    assert sample(found, "stratus_node_capacity_vcpus") == 8
    assert sample(found, "stratus_node_capacity_memory_bytes") == 16 * GiB
    assert sample(found, "stratus_node_allocated_vcpus") == 3
    assert sample(found, "stratus_node_allocated_memory_bytes") == GiB + 256 * 2**20
    assert sample(found, "stratus_agent_guests", state="Running") == 1
    assert sample(found, "stratus_agent_guests", state="Paused") == 1
    # The fake image store holds nothing and looks nothing up.
    assert sample(found, "stratus_image_cache_images") == 0
    assert sample(found, "stratus_image_cache_misses_total") == 0


async def test_a_hypervisor_that_cannot_be_read_leaves_the_rest(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    await two_guests(agent)

    async def broken() -> list[base.GuestStats]:
        raise OSError("cannot connect to libvirtd")

    monkeypatch.setattr(agent.compute, "guest_stats", broken)
    found = await agent.scrape()
    assert sample(found, "stratus_agent_scrape_collector_success", collector="guests") == 0
    assert sample(found, "stratus_agent_scrape_collector_success", collector="capacity") == 1
    assert [k for k in found if k[0].startswith("stratus_guest_")] == []
    assert sample(found, "stratus_node_allocated_vcpus") is None  # unknown, not wrong
    assert sample(found, "stratus_node_capacity_vcpus") == 8


def stats(uid: str, **fields: Any) -> base.GuestStats:
    return base.GuestStats(uid=uid, state="running", vcpus=4, memory_bytes=2 * GiB, **fields)


def test_guests_the_manager_holds_no_spec_of_are_named_by_their_definition() -> None:
    """After an agent restart the manager holds no spec until the operator sends one: the
    driver's reading of the definition names the Instance, and counts in the allocation."""
    known = GuestSpec.model_validate(guest_spec(name="web", namespace="team-a", cpu=1))
    found = [
        stats(known.uid, namespace="stale", name="stale"),  # the manager's spec wins
        stats("2c7d3c8e-46b5-4b4e-9c4e-5a2b1f0d9e11", namespace="team-b", name="db"),
        stats("9f1c2d3e-0000-4000-8000-000000000001"),  # nobody can name it: no series
    ]
    specs = {known.uid: known}
    labelled = agent_metrics.label_guests(specs, found)
    assert [g.labels for g in labelled] == [
        ("team-a", "web", known.uid),
        ("team-b", "db", "2c7d3c8e-46b5-4b4e-9c4e-5a2b1f0d9e11"),
    ]
    cpus, memory = agent_metrics.allocation(specs, found)
    assert (cpus, memory) == (1 + 4 + 4, known.memory_bytes + 4 * GiB)
