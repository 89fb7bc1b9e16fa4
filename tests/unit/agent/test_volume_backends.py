"""File and ceph volumes served at once: VolumeDrivers routes each spec by backend and pool,
each UID to the driver holding it, over in-memory drivers (a fake Ceph pool per CephPool).

The same through the agent's API, with real Ceph and libvirt, is in
tests/integration/agent/test_rbd_agent.py.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from stratus_agent import config as agent_config
from stratus_agent import main as agent_main
from stratus_agent.base import RbdSource, VolumeAttachment
from stratus_agent.drivers.images.fake import FakeImageStore
from stratus_agent.drivers.storage.fake_volumes import FakeVolumeDriver
from stratus_agent.errors import ProvisioningError
from stratus_agent.manager.backends import NoCeph, VolumeDrivers
from stratus_agent.manager.provisioner import NodeProvisioner
from stratus_agent.manager.snapshots import SnapshotManager
from stratus_agent.manager.volumes import VolumeManager
from stratus_api.guest import GuestEvent, GuestSpec
from stratus_api.v1alpha1.volume import VolumeBackend
from stratus_api.volume_wire import (
    CephAccess,
    NodeSnapshotSpec,
    NodeSnapshotState,
    NodeVolumeSpec,
    NodeVolumeState,
    disk_serial,
)
from testsupport import guest_spec, until, volume_spec

POOL_A = "5f0c2a55-6a0e-4c43-9f3c-0a1b2c3d4e5f"
POOL_B = "9d8e7f60-1a2b-4c3d-8e9f-0a1b2c3d4e5f"


def access(pool_uid: str = POOL_A, *, key: str = "QUFBQQ==", pool: str = "rbd-a") -> CephAccess:
    return CephAccess(pool_uid=pool_uid, monitors=["10.0.0.1:3300"], pool=pool, user="stratus",
                      key=SecretStr(key))  # fmt: skip


class FakeCephDriver(FakeVolumeDriver):
    """One fake Ceph pool: volumes in memory, attached as RBD images."""

    def __init__(self, ceph: CephAccess, directory: Path) -> None:
        super().__init__(directory / ceph.pool_uid)
        self.access = ceph
        self.reachable = True
        self.accesses = [ceph]
        self.closed = False
        self.released: list[str] = []

    @property
    def backend(self) -> VolumeBackend:
        return VolumeBackend.CEPH

    def use_access(self, ceph: CephAccess) -> bool:
        if ceph == self.access:
            return False
        self.access = ceph
        self.accesses.append(ceph)
        return True

    def close(self) -> None:
        self.closed = True

    async def release_image(self, image_uid: str) -> bool:
        if not self.reachable:
            raise ProvisioningError("VolumeCreateFailed", f"cannot reach {self.access.pool}")
        self.released.append(image_uid)
        return True

    async def list(self) -> list[Any]:
        if not self.reachable:
            raise ProvisioningError("VolumeCreateFailed", f"cannot reach {self.access.pool}")
        return await super().list()

    async def attach(self, uid: str, owner: Any) -> VolumeAttachment:
        await super().attach(uid, owner)
        source = RbdSource(pool=self.access.pool, image=f"volume-{uid}", monitors=("m",),
                           user=self.access.user, secret_uuid="s")  # fmt: skip
        return VolumeAttachment(name=uid, format="raw", serial=disk_serial(uid), rbd=source)

    async def usage(self) -> Any:
        return (await super().usage()).model_copy(
            update={"pool": self.access.pool, "pool_uid": self.access.pool_uid}
        )


class FakePools:
    """CephPools over FakeCephDriver; `kept` are the pools a restarted node saved."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.made: dict[str, FakeCephDriver] = {}
        self.kept: list[FakeCephDriver] = []

    def make(self, ceph: CephAccess) -> FakeCephDriver:
        self.made[ceph.pool_uid] = driver = FakeCephDriver(ceph, self.directory)
        return driver

    def saved(self) -> Sequence[FakeCephDriver]:
        return list(self.kept)


class Events:
    def __init__(self) -> None:
        self.events: list[GuestEvent] = []

    def publish(self, event: GuestEvent) -> None:
        self.events.append(event)


@dataclass
class Node:
    files: FakeVolumeDriver
    pools: FakePools
    drivers: VolumeDrivers
    volumes: VolumeManager
    snapshots: SnapshotManager


async def start_node(tmp_path: Path, pools: FakePools | None = None) -> Node:
    files = FakeVolumeDriver(tmp_path / "volumes")
    pools = pools or FakePools(tmp_path / "ceph")
    drivers = VolumeDrivers(files, pools)
    events = Events()
    volumes = VolumeManager(drivers, FakeImageStore(tmp_path / "images"), events, node="n")
    await volumes.start()
    snapshots = SnapshotManager(drivers, volumes, events)
    await snapshots.start()
    return Node(files, pools, drivers, volumes, snapshots)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    started = await start_node(tmp_path)
    yield started
    await started.snapshots.stop()
    await started.volumes.stop()


def ceph_spec(ceph: CephAccess | None = None, **overrides: Any) -> NodeVolumeSpec:
    ceph = ceph or access()
    return NodeVolumeSpec.model_validate(
        volume_spec(backend="ceph", ceph=ceph.model_dump(mode="json", by_alias=True), **overrides)
    )


async def in_state(volumes: VolumeManager, spec: NodeVolumeSpec, state: NodeVolumeState) -> Any:
    await volumes.ensure(spec)
    await until(state.value, lambda: (s := volumes.status(spec.uid)) and s.state is state)
    return volumes.status(spec.uid)


async def test_file_and_ceph_volumes_side_by_side_each_in_its_own_driver(node: Node) -> None:
    local = NodeVolumeSpec.model_validate(volume_spec())
    remote = ceph_spec(sizeBytes=2 * 2**20)
    await in_state(node.volumes, local, NodeVolumeState.AVAILABLE)
    await in_state(node.volumes, remote, NodeVolumeState.AVAILABLE)

    pool = node.pools.made[POOL_A]
    assert list(node.files.volumes) == [local.uid] and list(pool.volumes) == [remote.uid]
    inventory = await node.volumes.inventory()
    assert {v.uid for v in inventory.volumes} == {local.uid, remote.uid}
    assert [(p.backend.value, p.pool, p.used_bytes) for p in inventory.pools] == [
        ("file", None, 2**20), ("ceph", "rbd-a", 2 * 2**20)
    ]  # fmt: skip


async def test_a_deleted_image_is_released_in_every_pool_an_unreachable_one_logged(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    for pool in (access(), access(POOL_B, pool="rbd-b")):
        await in_state(node.volumes, ceph_spec(pool), NodeVolumeState.AVAILABLE)
    node.pools.made[POOL_A].reachable = False
    await node.volumes.release_image("img-uid")
    assert node.pools.made[POOL_B].released == ["img-uid"]
    assert "image img-uid: not released in Ceph pool rbd-a" in caplog.text


async def test_each_uid_goes_to_the_driver_holding_it(node: Node) -> None:
    remote = ceph_spec()
    await in_state(node.volumes, remote, NodeVolumeState.AVAILABLE)
    pool = node.pools.made[POOL_A]

    grown = ceph_spec(uid=remote.uid, generation=2, sizeBytes=3 * 2**20)
    await node.volumes.ensure(grown)
    await until("grown", lambda: pool.volumes[remote.uid].size_bytes == 3 * 2**20)

    snap = NodeSnapshotSpec.model_validate({
        "uid": "3e0f4d2a-1b2c-4d3e-8f9a-0b1c2d3e4f5a", "name": "s", "namespace": "team-a",
        "generation": 1, "backend": "ceph", "volume": remote.uid,
        "ceph": access().model_dump(mode="json", by_alias=True),
    })  # fmt: skip
    await node.snapshots.ensure(snap)
    ready = NodeSnapshotState.READY
    await until("Ready", lambda: (s := node.snapshots.status(snap.uid)) and s.state is ready)
    assert list(pool.snapshots) == [snap.uid] and not node.files.snapshots

    restored = ceph_spec(sizeBytes=3 * 2**20, source={"snapshot": snap.uid})
    await in_state(node.volumes, restored, NodeVolumeState.AVAILABLE)
    assert restored.uid in pool.volumes and restored.uid not in node.files.volumes
    # A file volume cannot be restored from a ceph snapshot: copies stay in one backend.
    crossed = NodeVolumeSpec.model_validate(volume_spec(sizeBytes=3 * 2**20,
                                                        source={"snapshot": snap.uid}))  # fmt: skip
    failed = await in_state(node.volumes, crossed, NodeVolumeState.FAILED)
    assert failed.reason == "VolumeNotFound" and "Ceph pool rbd-a" in failed.message

    assert await node.snapshots.delete(snap.uid) and not pool.snapshots
    assert await node.volumes.delete(remote.uid)
    assert remote.uid not in pool.volumes and node.volumes.status(remote.uid) is None


async def test_an_unknown_pool_is_made_from_the_access_and_its_volumes_adopted(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    first = ceph_spec(access(POOL_B, pool="rbd-b"))
    await in_state(node.volumes, first, NodeVolumeState.AVAILABLE)
    pool_b = node.pools.made[POOL_B]
    # Made by another node sharing the pool, after it was listed: a delete still finds it.
    await pool_b.create("0d1e2f3a-4b5c-4d6e-8f7a-9b0c1d2e3f4a", 2**20)
    assert await node.volumes.delete("0d1e2f3a-4b5c-4d6e-8f7a-9b0c1d2e3f4a")
    assert not set(pool_b.volumes) - {first.uid}

    # A pool new to the node, named by a spec: made from its access, listed, adopted.
    ready = FakeCephDriver(access(), node.pools.directory)
    await ready.create("1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", 2**20)
    node.pools.make = lambda ceph: ready  # type: ignore[method-assign]
    spec = ceph_spec(sizeBytes=2**20)
    await in_state(node.volumes, spec, NodeVolumeState.AVAILABLE)
    adopted = node.volumes.status("1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d")
    assert adopted is not None and adopted.state is NodeVolumeState.AVAILABLE
    assert spec.uid in ready.volumes

    # A rotated key reaches the pool the node knows; the key is never logged.
    rotated = access(key="QkJCQg==")
    again = ceph_spec(rotated, uid=spec.uid, generation=2)
    assert (await node.volumes.ensure(again)).state is NodeVolumeState.AVAILABLE
    assert ready.accesses == [access(), rotated]
    assert "new access" in caplog.text and "QkJCQg==" not in caplog.text


async def test_an_unreachable_new_pool_fails_the_volume_and_the_next_spec_tries_again(
    node: Node,
) -> None:
    down = FakeCephDriver(access(), node.pools.directory)
    down.reachable = False
    node.pools.make = lambda ceph: down  # type: ignore[method-assign]
    spec = ceph_spec()
    failed = await in_state(node.volumes, spec, NodeVolumeState.FAILED)
    assert "cannot reach rbd-a" in failed.message and down.closed
    assert [d.backend.value for d in node.drivers.all()] == ["file"]

    down.reachable = True
    await in_state(node.volumes, ceph_spec(uid=spec.uid, generation=2), NodeVolumeState.AVAILABLE)
    assert spec.uid in down.volumes


async def test_pools_saved_before_a_restart_are_served_again_unreachable_ones_skipped(
    tmp_path: Path,
) -> None:
    pools = FakePools(tmp_path / "ceph")
    up = FakeCephDriver(access(), pools.directory)
    await up.create("1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", 2**20)
    await up.snapshot(
        "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "3e0f4d2a-1b2c-4d3e-8f9a-0b1c2d3e4f5a"
    )
    down = FakeCephDriver(access(POOL_B, pool="rbd-b"), pools.directory)
    down.reachable = False
    pools.kept = [up, down]
    node = await start_node(tmp_path, pools)
    try:
        assert node.drivers.all() == [node.files, up] and down.closed
        volume = node.volumes.status("1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d")
        snapshot = node.snapshots.status("3e0f4d2a-1b2c-4d3e-8f9a-0b1c2d3e4f5a")
        assert volume is not None and volume.state is NodeVolumeState.AVAILABLE
        assert snapshot is not None and snapshot.state is NodeSnapshotState.READY
        assert [p.pool for p in (await node.volumes.inventory()).pools] == [None, "rbd-a"]
    finally:
        await node.volumes.stop()


async def test_a_guest_gets_its_ceph_disk_from_the_pool_its_access_names(
    node: Node, tmp_path: Path
) -> None:
    remote = ceph_spec()
    await in_state(node.volumes, remote, NodeVolumeState.AVAILABLE)
    local = NodeVolumeSpec.model_validate(volume_spec())
    await in_state(node.volumes, local, NodeVolumeState.AVAILABLE)
    provisioner = agent_main.fake_provisioner(tmp_path)
    provisioner.volumes = node.volumes
    wire = guest_spec()
    ceph = access().model_dump(mode="json", by_alias=True)
    wire["disks"] = [
        {"name": "boot", "volume": {"uid": remote.uid, "backend": "ceph",
                                    "serial": disk_serial(remote.uid), "ceph": ceph}},
        {"name": "data", "volume": {"uid": local.uid, "backend": "file",
                                    "serial": disk_serial(local.uid)}},
    ]  # fmt: skip
    spec = GuestSpec.model_validate(wire)
    facts = await provisioner.prepare(spec)
    assert facts.root_disk.rbd is not None and facts.root_disk.rbd.pool == "rbd-a"
    assert [v.name for v in facts.volumes] == ["data"] and facts.volumes[0].path
    # The same volume named as a file disk: refused, naming where it is.
    wire["disks"][1]["volume"] = {"uid": remote.uid, "backend": "file",
                                  "serial": disk_serial(remote.uid)}  # fmt: skip
    with pytest.raises(ProvisioningError, match="Ceph pool rbd-a") as refused:
        await _prepare(provisioner, wire)
    assert refused.value.reason == "VolumeNotFound"


async def _prepare(provisioner: NodeProvisioner, wire: dict[str, Any]) -> None:
    await provisioner.prepare(GuestSpec.model_validate(wire))


async def test_without_ceph_bindings_a_ceph_spec_fails_naming_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "stratus_agent.drivers.storage.rbd_volumes", raising=False)
    monkeypatch.setitem(sys.modules, "rados", None)  # `import rados` raises ImportError
    config = agent_config.AgentConfig(
        token_file=tmp_path / "token", state_dir=tmp_path, compute="fake",
        listen=agent_config.ListenConfig(insecure=True),
        storage=agent_config.StorageConfig(driver="file"),
    )  # fmt: skip
    pools = agent_main.ceph_pools(config)
    assert isinstance(pools, NoCeph) and "python3-rados" in pools.why

    files = FakeVolumeDriver(tmp_path / "volumes")
    volumes = VolumeManager(VolumeDrivers(files, pools), FakeImageStore(tmp_path), Events(),
                            node="n")  # fmt: skip
    await volumes.start()
    try:
        failed = await in_state(volumes, ceph_spec(), NodeVolumeState.FAILED)
        assert failed.reason == "BackendUnsupported"
        assert "python3-rados" in failed.message and "rbd-a" in failed.message
        local = NodeVolumeSpec.model_validate(volume_spec())
        await in_state(volumes, local, NodeVolumeState.AVAILABLE)  # files are still served
    finally:
        await volumes.stop()


async def test_a_ceph_volume_a_guest_uses_is_snapshotted_a_file_one_waits(node: Node) -> None:
    """An RBD snapshot is taken at one instant by the cluster (crash-consistent); a file
    copy made while QEMU writes would be torn."""
    remote = ceph_spec()
    local = NodeVolumeSpec.model_validate(volume_spec())
    await in_state(node.volumes, remote, NodeVolumeState.AVAILABLE)
    await in_state(node.volumes, local, NodeVolumeState.AVAILABLE)
    await node.volumes.use("guest-a", [remote.uid, local.uid], None)

    def snap(uid: str, volume: NodeVolumeSpec) -> NodeSnapshotSpec:
        extra = {"ceph": access().model_dump(mode="json", by_alias=True)} if volume.ceph else {}
        return NodeSnapshotSpec.model_validate({
            "uid": uid, "name": "s", "namespace": "team-a", "generation": 1,
            "backend": volume.backend.value, "volume": volume.uid, **extra,
        })  # fmt: skip

    live = snap("3e0f4d2a-1b2c-4d3e-8f9a-0b1c2d3e4f51", remote)
    torn = snap("3e0f4d2a-1b2c-4d3e-8f9a-0b1c2d3e4f52", local)
    await node.snapshots.ensure(live)
    await node.snapshots.ensure(torn)
    ready, failed = NodeSnapshotState.READY, NodeSnapshotState.FAILED
    await until("Ready", lambda: (s := node.snapshots.status(live.uid)) and s.state is ready)
    await until("Failed", lambda: (s := node.snapshots.status(torn.uid)) and s.state is failed)
    status = node.snapshots.status(torn.uid)
    assert status is not None and status.reason == "VolumeInUse"
