"""Assemble and run the agent from its configuration."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path

import prometheus_client
from aiohttp import web

from stratus_agent import base
from stratus_agent import config as agent_config
from stratus_agent.api.events import EventHub
from stratus_agent.api.server import create_app
from stratus_agent.errors import ProvisioningError
from stratus_agent.manager.backends import NoCeph, VolumeDrivers
from stratus_agent.manager.guests import GuestManager
from stratus_agent.manager.owners import GuestOwners
from stratus_agent.manager.provisioner import NodeProvisioner
from stratus_agent.manager.recovery import Backoff, RecoveryPolicy, RestartBook
from stratus_agent.manager.sequence import SequenceClock
from stratus_agent.manager.snapshots import SnapshotManager
from stratus_agent.manager.volumes import AttachmentBook, VolumeManager
from stratus_api.v1alpha1.volume import VolumeBackend

log = logging.getLogger("stratus.agent")


@dataclass(frozen=True)
class Agent:
    """The assembled agent: its manager, the hub its event streams read, the image store
    the API serves too (DELETE /v1/images/{uid}), the node's volumes and snapshots, and
    its network driver (node network specs, /v1/networks)."""

    manager: GuestManager
    hub: EventHub
    images: base.ImageStore
    volumes: VolumeManager
    snapshots: SnapshotManager
    network: base.NetworkDriver


def image_store(config: agent_config.AgentConfig, disks: base.DiskDriver) -> base.ImageStore:
    """The node's image store, by `images.driver`; never downloads from the agent's own
    port, and keeps what `disks` says guests use."""
    directory = config.state_dir / "images"
    if config.images.driver == "fake":
        from stratus_agent.drivers.images.fake import FakeImageStore

        return FakeImageStore(directory)
    from stratus_agent.drivers.images.cache import ImageCache

    return ImageCache(
        directory, config.images, users=disks.images_in_use, own_ports=(config.listen.port,)
    )


def disk_driver(config: agent_config.AgentConfig) -> base.DiskDriver:
    directory = config.state_dir / "guests"
    if config.storage.driver == "fake":
        from stratus_agent.drivers.storage.fake import FakeDiskDriver

        return FakeDiskDriver(directory)
    from stratus_agent.drivers.storage.file import FileDiskDriver

    return FileDiskDriver(directory)


def local_volume_drivers(config: agent_config.AgentConfig) -> list[base.VolumeDriver]:
    """The node's own volume backends: files, and LVM where configured."""
    # Volumes follow the disks: a node that makes no disks makes no volumes either.
    directory = config.state_dir / "volumes"
    if config.storage.driver == "fake":
        from stratus_agent.drivers.storage.fake_volumes import FakeVolumeDriver

        return [
            FakeVolumeDriver(directory if backend == "file" else directory / backend,
                             capacity=config.fake.volume_pool_bytes,
                             backend=VolumeBackend(backend))
            for backend in dict.fromkeys(config.fake.volume_backends)
        ]  # fmt: skip
    from stratus_agent.drivers.storage.file_volumes import FileVolumeDriver

    drivers: list[base.VolumeDriver] = [FileVolumeDriver(directory)]
    if config.storage.lvm is not None:
        from stratus_agent.drivers.storage.lvm_volumes import LvmVolumeDriver

        drivers.append(LvmVolumeDriver(config.storage.lvm))
    return drivers


def ceph_pools(config: agent_config.AgentConfig) -> base.CephPools:
    """RBD drivers, one per Ceph pool a spec names, with their files under state_dir/ceph;
    none on a node that makes no disks or lacks Ceph's Python bindings (optional: such an
    agent serves file volumes and refuses ceph ones, naming what is missing)."""
    if config.storage.driver == "fake":
        return NoCeph("its storage driver is fake")
    try:
        from stratus_agent.drivers.storage.rbd_volumes import RbdPools
    except ImportError as exc:
        return NoCeph(
            f"Ceph's Python bindings do not load ({exc}): install python3-rados and "
            "python3-rbd (hack/install-deps)"
        )
    return RbdPools(config.state_dir)


def network_driver(config: agent_config.AgentConfig) -> base.NetworkDriver:
    network = config.network
    if network.driver == "fake":
        from stratus_agent.drivers.network.fake import FakeNetworkDriver

        return FakeNetworkDriver()
    from stratus_agent.drivers.network.bridge import OvsBridge
    from stratus_agent.drivers.network.conntrack import Conntrack
    from stratus_agent.drivers.network.dhcp import DhcpServers
    from stratus_agent.drivers.network.firewall import Firewall
    from stratus_agent.drivers.network.guest_nics import GuestNics
    from stratus_agent.drivers.network.local_vlans import LocalVlans
    from stratus_agent.drivers.network.ovs import OvsNetworkDriver
    from stratus_agent.drivers.network.port_security import PortSecurity
    from stratus_agent.drivers.network.routers import Routers
    from stratus_agent.drivers.network.spec_files import SpecFiles
    from stratus_agent.drivers.network.tunnels import TunnelBridge
    from stratus_api.network_wire import NodeNetworkSpec
    from stratus_api.router_wire import NodeRouterSpec
    from stratus_api.security_group_wire import NodeSecurityGroupSpec

    directory = config.state_dir / "network"
    vlans = LocalVlans(directory / "local-vlans.json")
    nics = GuestNics(directory / "guest-nics.json")
    providers = {physnet: OvsBridge(bridge, network.datapath_type, network.vsctl)
                 for physnet, bridge in network.physical_networks.items()}  # fmt: skip
    integration = OvsBridge(network.bridge, network.datapath_type, network.vsctl)
    tunnel = network.tunnel
    return OvsNetworkDriver(
        integration,
        vlans,
        providers,
        specs=SpecFiles(directory / "specs", NodeNetworkSpec),
        tunnel=None if tunnel is None else TunnelBridge(tunnel, integration, network.vsctl),
        local_ip=None if tunnel is None else tunnel.local_ip,
        dhcp={
            bridge.name: DhcpServers(config.state_dir, bridge.name, network.vsctl)
            for bridge in (integration, *providers.values())
        },
        guest_nics=nics,
        routers=Routers(config.state_dir, integration.name, network.vsctl),
        router_specs=SpecFiles(directory / "routers", NodeRouterSpec),
        security=PortSecurity(
            integration, Firewall(integration, network.ofctl),
            SpecFiles(directory / "security-groups", NodeSecurityGroupSpec), nics, vlans,
            Conntrack(network.appctl, network.vswitchd_target),
            enabled=network.port_security,
        ),
    )  # fmt: skip


def seed_drive(config: agent_config.AgentConfig) -> base.SeedDrive:
    # The seed follows the disks: a node that makes no disks makes no seed either.
    directory = config.state_dir / "guests"
    if config.storage.driver == "fake":
        from stratus_agent.drivers.seed.fake import FakeSeed

        return FakeSeed(directory)
    from stratus_agent.drivers.seed.nocloud import NoCloudSeed

    return NoCloudSeed(directory)


def fake_provisioner(directory: Path) -> NodeProvisioner:
    """A provisioner that makes nothing, as with compute: fake (tests and benchmarks)."""
    from stratus_agent.drivers.images.fake import FakeImageStore
    from stratus_agent.drivers.network.fake import FakeNetworkDriver
    from stratus_agent.drivers.seed.fake import FakeSeed
    from stratus_agent.drivers.storage.fake import FakeDiskDriver

    return NodeProvisioner(
        images=FakeImageStore(directory / "images"),
        disks=FakeDiskDriver(directory),
        network=FakeNetworkDriver(),
        seed=FakeSeed(directory),
    )


async def build(config: agent_config.AgentConfig) -> Agent:
    """Drivers by configuration, connected and ready."""
    hub = EventHub()
    compute: base.ComputeDriver
    owners: GuestOwners | None = None
    if config.compute == "fake":
        from stratus_agent.drivers.compute.fake import FakeComputeDriver

        compute = FakeComputeDriver(config.fake.cpu, config.fake.memory_bytes)
    else:
        from stratus_agent.drivers.compute.libvirt_driver import LibvirtComputeDriver

        _prepare_state_dir(config.state_dir)
        isolation = config.isolation
        libvirt_compute = LibvirtComputeDriver(
            config.libvirt_uri,
            console_dir=config.state_dir / "guests",
            qemu_state_dir=isolation.libvirt_qemu_dir,
            node=config.node_name,
            # Unique among the agents of one host: two local clouds both have a node "local".
            agent=str(config.state_dir.resolve()),
        )
        owners = GuestOwners(isolation.uid_first, isolation.uid_count, isolation.gid)
        # Before the manager starts: a guest it restarts must not get a UID already taken.
        owners.adopt(await libvirt_compute.owners())
        compute = libvirt_compute
    disks = disk_driver(config)
    images = image_store(config, disks)
    sequence = SequenceClock()  # one order for every report: guests', volumes', snapshots'
    volume_drivers = VolumeDrivers(local_volume_drivers(config), ceph_pools(config))
    volumes = VolumeManager(
        volume_drivers,
        images,
        hub,
        node=config.node_name,
        sequence=sequence,
        book=AttachmentBook(config.state_dir / "volumes" / "attachments.json"),
        resize_live=compute.resize_disk,
    )
    await volumes.start()
    snapshots = SnapshotManager(volume_drivers, volumes, hub, sequence=sequence)
    await snapshots.start()
    network = network_driver(config)
    try:
        await network.check()  # the overlay from the kept specs, before any guest is seen
    except ProvisioningError as exc:
        log.warning("node networking not ready yet (the periodic check retries): %s", exc)
    provisioner = NodeProvisioner(
        images=images,
        disks=disks,
        network=network,
        seed=seed_drive(config),
        owners=owners,
        volumes=volumes,
    )
    manager = GuestManager(
        compute,
        provisioner,
        hub,
        policy=recovery_policy(config),
        restarts=RestartBook(config.state_dir / "guests"),
        sequence=sequence,
        answer_within=config.answer_within_seconds,
    )
    await manager.start()
    _check_kvm_access(compute.virt_type, config.isolation)
    return Agent(manager, hub, images, volumes, snapshots, network)


def _check_kvm_access(virt_type: str, isolation: agent_config.IsolationConfig) -> None:
    """libvirt gives a per-guest user no supplementary groups, so with a group of its own a
    guest's QEMU opens /dev/kvm only if everyone may (udev's usual 0666)."""
    kvm = Path("/dev/kvm")
    if virt_type != "kvm" or isolation.gid is not None or not kvm.exists():
        return
    if kvm.stat().st_mode & 0o006 != 0o006:
        log.warning(
            "%s is not world read-writable, so guests running as their own users cannot "
            "use KVM: set isolation.gid to the kvm group's id, or make it 0666",
            kvm,
        )


def recovery_policy(config: agent_config.AgentConfig) -> RecoveryPolicy:
    r = config.recovery
    return RecoveryPolicy(
        retry=Backoff(r.retry_initial_seconds, r.retry_max_seconds),
        restart=Backoff(r.restart_initial_seconds, r.restart_max_seconds),
        restart_stable_seconds=r.restart_stable_seconds,
        node_check_seconds=config.network.check_seconds,
    )


def _prepare_state_dir(state_dir: Path) -> None:
    """Each guest's QEMU runs as a user of its own: it opens its own files, but every
    directory above them must let others through (o+x), which /root or a 0700 temporary
    directory does not."""
    for directory in (state_dir, state_dir / "images", state_dir / "guests", state_dir / "volumes"):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o711)
    for parent in state_dir.resolve().parents:
        if not parent.stat().st_mode & 0o001:
            raise agent_config.ConfigError(
                f"state_dir: {parent} is not traversable by others, so QEMU (running as "
                f"each guest's own user) cannot reach disks under {state_dir}; use a "
                "directory such as /var/lib/stratus or chmod o+x it"
            )


def _ssl_context(listen: agent_config.ListenConfig) -> ssl.SSLContext | None:
    if listen.insecure:
        return None
    assert listen.tls_cert_file is not None and listen.tls_key_file is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(listen.tls_cert_file, listen.tls_key_file)
    return context


async def serve(config: agent_config.AgentConfig) -> None:
    token, metrics_token = config.read_token(), config.read_metrics_token()
    # No `_created` series beside every counter: read by nobody, a third of a scrape.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    agent = await build(config)
    manager = agent.manager
    app = create_app(
        manager,
        agent.hub,
        token=token,
        metrics_token=metrics_token,
        node=config.node_name,
        heartbeat=config.heartbeat_seconds,
        images=agent.images,
        volumes=agent.volumes,
        snapshots=agent.snapshots,
        physical_networks=sorted(config.network.physical_networks),
        networks=agent.network,
        tunnel_endpoint=config.network.tunnel.local_ip if config.network.tunnel else None,
    )
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner, config.listen.host, config.listen.port, ssl_context=_ssl_context(config.listen)
    )
    await site.start()
    scheme = "http" if config.listen.insecure else "https"
    if config.listen.insecure:
        log.warning(
            "serving plain HTTP on %s:%s (listen.insecure): the bearer token and user-data "
            "cross this connection unencrypted",
            config.listen.host, config.listen.port,
        )  # fmt: skip
    log.info(
        "agent for node %s serving %s://%s:%s (virt type %s)",
        config.node_name, scheme, config.listen.host, config.listen.port,
        manager.compute.virt_type,
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("agent stopping; guests keep running")
        await runner.cleanup()
        await manager.stop()
        await agent.snapshots.stop()
        await agent.volumes.stop()
