"""A real node for the agent: libvirtd + QEMU (TCG), Open vSwitch (netdev), the test image.

Node services are started only when not already running, and stopped again only if this
module started them. Each module gets its own state directory under STATE_ROOT and its own
OVS bridge; every domain a test makes is destroyed and undefined when the test ends, pass or
fail, and the bridge is deleted when the module ends.

Where the state lives matters: QEMU under libvirt runs as libvirt-qemu, and libvirt's
dynamic ownership chowns each disk, ISO and backing file to that user when a domain starts,
but never the directories above them. So every directory from / down to the agent's state
must be world-traversable (o+x); pytest's tmp_path (/tmp/pytest-of-root is 0700) and
~/.cache (/root is 0700) are not.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from stratus_agent import config as agent_config
from stratus_agent import main as agent_main
from stratus_agent.api.server import create_app
from stratus_agent.manager.guests import GuestManager
from stratus_agent.manager.volumes import VolumeManager
from stratus_api import naming
from stratus_api.sources import SourcePolicy
from stratus_api.volume_wire import CephAccess
from testsupport import AGENT_AUTH, AGENT_TOKEN, build_test_image, guest_spec

LIBVIRT_URI = "qemu:///system"
# World-traversable, unlike pytest's tmp dirs: see the module docstring.
STATE_ROOT = Path(os.environ.get("STRATUS_TEST_STATE_ROOT", "/var/lib/stratus-test"))
MARKER = "STRATUS-GUEST: "
TOOLS = ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "qemu-img", "ovs-vsctl",
         "ovsdb-server", "ovs-vswitchd")  # fmt: skip
# Bounds, not expectations. Here a define+start takes ~0.4 s and a TCG guest of the test
# image is ready ~4 s later; but a libvirtd that re-probes QEMU takes ~20 s per define and
# per start, one guest at a time (see stratus_devcloud.nodeservices).
START_TIMEOUT = 240.0
BOOT_TIMEOUT = 180.0


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("virsh", "-c", LIBVIRT_URI, *args, check=check)


def destroy_domain(uid: str) -> None:
    """Remove a guest's domain whatever state it is in; nothing if it is gone."""
    name = naming.domain_name(uid)
    if virsh("domstate", name, check=False).returncode != 0:
        return
    virsh("destroy", name, check=False)
    virsh("undefine", "--managed-save", "--nvram", name, check=False)


def _which(tool: str) -> bool:
    return shutil.which(tool) is not None or Path("/usr/sbin", tool).exists()


@pytest.fixture(scope="session")
def stratus_test_image() -> Path:
    """hack/build-test-image's qcow2 (cached between runs)."""
    if not _which("qemu-img"):
        pytest.skip("qemu-img not installed: run hack/install-deps")
    return build_test_image()


@dataclass
class Node:
    """The node under test: the agent's state directory and its OVS bridge."""

    root: Path
    bridge: str
    services_started: list[str]
    # One Image for the whole module, so the agent's cache fetches it once.
    image_uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def state_dir(self) -> Path:
        return self.root / "agent"

    @property
    def guests_dir(self) -> Path:
        return self.state_dir / "guests"

    # What the node itself says, through virsh and ovs-vsctl.

    def domains(self) -> list[str]:
        """Names of every domain libvirt knows, running or not."""
        return virsh("list", "--all", "--name").stdout.split()

    def domain_state(self, uid: str) -> str:
        return virsh("domstate", naming.domain_name(uid)).stdout.strip()

    def domain_id(self, uid: str) -> str:
        return virsh("domid", naming.domain_name(uid)).stdout.strip()

    def domain_xml(self, uid: str, *, inactive: bool = False) -> str:
        """The live definition, or with `inactive` the persistent one."""
        flags = ("--inactive",) if inactive else ()
        return virsh("dumpxml", *flags, naming.domain_name(uid)).stdout

    def ovs_ports_of(self, uid: str) -> list[str]:
        """OVS interfaces tagged external_ids:vm-id=<uid>, on any bridge."""
        out = run("ovs-vsctl", "--timeout=10", "--bare", "--columns=name", "find",
                  "Interface", f"external_ids:vm-id={uid}").stdout  # fmt: skip
        return sorted(out.split())

    def bridge_ports(self) -> list[str]:
        return sorted(run("ovs-vsctl", "--timeout=10", "list-ports", self.bridge).stdout.split())

    def port_tags(self) -> dict[str, int | None]:
        """Each port on the bridge with its VLAN tag (None: untagged)."""
        out = run("ovs-vsctl", "--timeout=10", "--format=json", "--columns=name,tag", "list",
                  "Port").stdout  # fmt: skip
        ports = set(self.bridge_ports())
        return {name: tag if isinstance(tag, int) else None
                for name, tag in json.loads(out)["data"] if name in ports}  # fmt: skip


def _world_traversable_dir() -> Path:
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    STATE_ROOT.chmod(0o755)
    root = Path(tempfile.mkdtemp(prefix="agent-", dir=STATE_ROOT))
    root.chmod(0o755)  # mkdtemp makes it 0700
    blocked = [p for p in (root, *root.parents) if not p.stat().st_mode & 0o001]
    if blocked:
        shutil.rmtree(root)
        pytest.fail(f"{blocked[-1]} is not world-traversable: QEMU could not reach {root}")
    return root


@pytest.fixture(scope="module")
def libvirt_node() -> Iterator[Node]:
    """libvirtd, virtlogd and OVS running; a fresh state directory and bridge."""
    if os.geteuid() != 0:
        pytest.skip("needs root: libvirt's qemu:///system and Open vSwitch")
    missing = [tool for tool in TOOLS if not _which(tool)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: run hack/install-deps")
    from stratus_devcloud.nodeservices import NodeServices  # noqa: PLC0415 - needs the tools

    root = _world_traversable_dir()
    services = NodeServices(root / "node-services")
    bridge = f"stt{secrets.token_hex(4)}"  # 11 characters: Linux allows 15
    try:
        node = Node(root=root, bridge=bridge, services_started=services.up())
        yield node
    finally:
        # Domains whose files live in this state directory (a test's own finalizer should
        # have removed them already).
        for name in virsh("list", "--all", "--name", check=False).stdout.split():
            uid = naming.instance_uid_of_domain(name)
            if uid and str(root) in virsh("dumpxml", name, check=False).stdout:
                destroy_domain(uid)
        run("ovs-vsctl", "--timeout=10", "--if-exists", "del-br", bridge, check=False)
        services.down()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def image_server(
    libvirt_node: Node, stratus_test_image: Path
) -> AsyncIterator[dict[str, Any]]:
    """Serves the test image over HTTP on 127.0.0.1; yields its ImageRef (wire form)."""
    digest = hashlib.sha256(stratus_test_image.read_bytes()).hexdigest()

    async def handle(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(stratus_test_image)

    app = web.Application()
    app.router.add_get("/stratus-test.qcow2", handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield {
            "uid": libvirt_node.image_uid,
            "name": "stratus-test",
            "url": str(server.make_url("/stratus-test.qcow2")),
            "sha256": digest,
            "format": "qcow2",
        }


@pytest.fixture
def created_guests(libvirt_node: Node) -> Iterator[list[str]]:
    """UIDs of the guests a test made: their domains are removed when it ends, pass or fail
    (after the test's agents stopped, see `start_agent`)."""
    uids: list[str] = []
    yield uids
    for uid in uids:
        destroy_domain(uid)


@pytest.fixture
def make_guest_spec(
    created_guests: list[str], image_server: dict[str, Any]
) -> Callable[..., dict[str, Any]]:
    """Guest specs (wire form) booting the test image, recorded in `created_guests`."""

    def make(**overrides: Any) -> dict[str, Any]:
        spec = guest_spec(**overrides)
        spec["disks"] = [{"name": "root", "image": image_server}]
        created_guests.append(spec["uid"])
        return spec

    return make


class Console:
    """A guest's serial console log, as virtlogd writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def text(self) -> str:
        try:
            return self.path.read_bytes().decode(errors="replace").replace("\r", "")
        except FileNotFoundError:
            return ""

    def markers(self) -> list[str]:
        """The test image's marker lines, without the prefix (a prompt may precede one)."""
        return [
            line[line.index(MARKER) + len(MARKER) :].rstrip()
            for line in self.text().splitlines()
            if MARKER in line
        ]


@dataclass
class AgentUnderTest:
    """The real agent app served over HTTP, with helpers that speak its API."""

    client: TestClient[Any, Any]
    manager: GuestManager
    node: Node
    volumes: VolumeManager | None = None
    stopped: bool = False

    async def put(self, spec: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.put(f"/v1/guests/{spec['uid']}", json=spec, headers=AGENT_AUTH)
        body: dict[str, Any] = await response.json()
        assert response.status == 202, body
        return body

    async def get(self, uid: str) -> dict[str, Any] | None:
        response = await self.client.get(f"/v1/guests/{uid}", headers=AGENT_AUTH)
        if response.status == 404:
            return None
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body

    async def volume_available(self, spec: dict[str, Any]) -> dict[str, Any]:
        """PUT a volume spec (wire form) and poll until the node has it Available at its
        generation."""
        path = f"/v1/volumes/{spec['uid']}"
        put = await self.client.put(path, json=spec, headers=AGENT_AUTH)
        assert put.status == 200, await put.text()
        for _ in range(1500):
            body: dict[str, Any] = await (await self.client.get(path, headers=AGENT_AUTH)).json()
            if body["state"] == "Available" and body.get("generation") == spec["generation"]:
                return body
            assert body["state"] != "Failed", body
            await asyncio.sleep(0.02)
        raise AssertionError(f"volume never Available: {body}")

    async def inventory(self) -> dict[str, Any]:
        response = await self.client.get("/v1/guests", headers=AGENT_AUTH)
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body

    async def delete(self, uid: str) -> dict[str, Any]:
        response = await self.client.delete(f"/v1/guests/{uid}", headers=AGENT_AUTH)
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body

    async def stop(self) -> None:
        """Stop serving and disconnect, as the agent does on SIGTERM (guests keep running);
        idempotent."""
        if not self.stopped:
            self.stopped = True
            await self.client.close()
            await self.manager.stop()
            if self.volumes is not None:
                await self.volumes.stop()

    def console(self, uid: str) -> Console:
        return Console(self.node.guests_dir / naming.console_log_file(uid))

    def diagnostics(self, uid: str) -> str:
        qemu_log = Path("/var/log/libvirt/qemu") / f"{naming.domain_name(uid)}.log"
        qemu = qemu_log.read_text(errors="replace")[-3000:] if qemu_log.exists() else ""
        return (
            f"--- agent status: {self.manager.status(uid)}\n"
            f"--- console (last 3000 chars):\n{self.console(uid).text()[-3000:]}\n"
            f"--- {qemu_log} (last 3000 chars):\n{qemu}"
        )

    async def wait_for_state(
        self,
        uid: str,
        state: str,
        *,
        generation: int | None = None,
        timeout: float = START_TIMEOUT,
    ) -> dict[str, Any]:
        """Poll GET /v1/guests/{uid} until the guest is in `state` (at `generation`)."""
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            status = await self.get(uid)
            if status is not None:
                if status["state"] == state and generation in (None, status["generation"]):
                    return status
                if status["state"] == "Failed" and state != "Failed":
                    break
            await asyncio.sleep(0.2)
        raise AssertionError(
            f"guest {uid}: not {state} (generation {generation}) within {timeout} s; "
            f"last status {status}\n{self.diagnostics(uid)}"
        )

    async def wait_for_marker(
        self, uid: str, marker: str, timeout: float = BOOT_TIMEOUT
    ) -> list[str]:
        """Poll the agent's status and the console log until `marker` shows up on the
        console; all markers by then. Fails early when the agent reports a failure."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            markers = self.console(uid).markers()
            if marker in markers:
                return markers
            status = await self.get(uid)
            if status is not None and status["state"] in ("Failed", "Crashed"):
                break
            await asyncio.sleep(0.2)
        raise AssertionError(
            f"guest {uid}: no {marker!r} on the console within {timeout} s\n{self.diagnostics(uid)}"
        )


async def stop_or_show_why(agent: AgentUnderTest, timeout: float = 90.0) -> None:
    """Stop the agent; if that hangs, fail after `timeout` with every asyncio task's stack
    (a teardown hang was seen once in a full run: the thread dump of pytest-timeout, 600 s
    later, showed only an idle loop)."""
    try:
        await asyncio.wait_for(asyncio.shield(agent.stop()), timeout)
    except TimeoutError:
        for task in asyncio.all_tasks():
            print(f"--- {task!r}", file=sys.stderr)
            task.print_stack(file=sys.stderr)
        raise AssertionError(f"the agent did not stop within {timeout:.0f} s") from None


@pytest.fixture
async def start_agent(
    libvirt_node: Node, created_guests: list[str], image_server: dict[str, Any]
) -> AsyncIterator[Callable[..., Awaitable[AgentUnderTest]]]:
    """Starts the agent as `stratus_agent.main` assembles it (LibvirtComputeDriver,
    NodeProvisioner over the file, OVS and NoCloud drivers, the image cache also behind
    the API, file volumes and an RBD driver per Ceph pool a spec names: see `ceph_agent`)
    over the node's state; more than
    one call simulates a restart. Keyword arguments replace config sections (`recovery=`,
    `network=`). Every agent started is stopped at the end; guests keep
    running, as with a real agent. The image server is on loopback, which the default
    source policy refuses: its exact host:port is allowed, as the all-in-one does."""
    token_file = libvirt_node.root / "token"
    token_file.write_text(AGENT_TOKEN)
    token_file.chmod(0o600)
    config = agent_config.AgentConfig(
        node_name="node-under-test",
        token_file=token_file,
        state_dir=libvirt_node.state_dir,
        libvirt_uri=LIBVIRT_URI,
        # Served by aiohttp's TestServer on loopback below; the listen section is not used.
        listen=agent_config.ListenConfig(insecure=True),
        network=agent_config.NetworkConfig(bridge=libvirt_node.bridge, datapath_type="netdev"),
        images=agent_config.ImagesConfig(
            sources=SourcePolicy(allowed_endpoints=(URL(image_server["url"]).raw_authority,))
        ),
    )
    running: list[AgentUnderTest] = []

    async def start(**sections: Any) -> AgentUnderTest:
        settings = config.model_copy(update=sections)
        built = await agent_main.build(settings)
        manager = built.manager
        app = create_app(
            manager,
            built.hub,
            token=settings.read_token(),
            node=settings.node_name,
            heartbeat=1.0,
            images=built.images,
            volumes=built.volumes,
            snapshots=built.snapshots,
            physical_networks=sorted(settings.network.physical_networks),
            networks=built.network,
        )
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        agent = AgentUnderTest(client, manager, libvirt_node, built.volumes)
        running.append(agent)
        return agent

    yield start
    for agent in reversed(running):
        await stop_or_show_why(agent)
    # A libvirt call cannot be cancelled: let those still running in worker threads end
    # before `created_guests` removes the domains they may be starting.
    await asyncio.get_running_loop().shutdown_default_executor()


@pytest.fixture
async def agent(start_agent: Callable[..., Awaitable[AgentUnderTest]]) -> AgentUnderTest:
    return await start_agent()


@pytest.fixture
async def ceph_agent(
    start_agent: Callable[..., Awaitable[AgentUnderTest]],
    created_guests: list[str],
    ceph_access: CephAccess,
) -> AsyncIterator[AgentUnderTest]:
    """The agent with the session's Ceph cluster up: it serves the pool a spec's `ceph`
    access names as it serves its files (one RBD driver per pool, files under
    state_dir/ceph). At the end, after the agents stopped: the test's guests, then the
    volumes it left in the pool (snapshots first) and the pool's libvirt secret."""
    from stratus_agent.drivers.storage.rbd_volumes import RbdVolumeDriver  # noqa: PLC0415

    pool = RbdVolumeDriver(ceph_access, STATE_ROOT / "ceph-cleanup")
    before = {volume.uid for volume in await pool.list()}
    agent = await start_agent()
    yield agent
    await agent.stop()
    for uid in created_guests:
        destroy_domain(uid)
    for snapshot in await pool.list_snapshots():
        if snapshot.volume_uid not in before:
            await pool.remove_snapshot(snapshot.uid)
    for volume in await pool.list():
        if volume.uid not in before:
            await pool.remove(volume.uid)
    await pool.release_image(agent.node.image_uid)  # imported for a volume made from it
    await asyncio.to_thread(pool.close)
    shutil.rmtree(pool.directory.parent.parent, ignore_errors=True)
    virsh("secret-undefine", naming.ceph_secret_uuid(ceph_access.pool_uid), check=False)
