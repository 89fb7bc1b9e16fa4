"""Assemble and run the agent from its configuration."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from pathlib import Path

from aiohttp import web

from stratus_agent import config as agent_config
from stratus_agent.compute.base import ComputeDriver
from stratus_agent.compute.fake import FakeComputeDriver
from stratus_agent.disks import GuestFiles
from stratus_agent.events import EventHub
from stratus_agent.images import ImageCache
from stratus_agent.manager import GuestManager, Provisioner
from stratus_agent.ovs import OvsBridge
from stratus_agent.owners import GuestOwners
from stratus_agent.provisioner import FakeProvisioner, NodeProvisioner
from stratus_agent.recovery import Backoff, RecoveryPolicy, RestartBook
from stratus_agent.server import create_app

log = logging.getLogger("stratus.agent")


def image_cache(config: agent_config.AgentConfig) -> ImageCache:
    """The node's image cache; never downloads from the agent's own port."""
    return ImageCache(
        config.state_dir / "images",
        config.images,
        guests=config.state_dir / "guests",
        own_ports=(config.listen.port,),
    )


async def build(
    config: agent_config.AgentConfig, images: ImageCache | None = None
) -> tuple[GuestManager, EventHub]:
    """Drivers by configuration, connected and ready. `images`: the image cache the API
    serves too (DELETE /v1/images/{uid}); made here when not given."""
    hub = EventHub()
    compute: ComputeDriver
    provisioner: Provisioner
    if config.compute == "fake":
        compute = FakeComputeDriver(config.fake.cpu, config.fake.memory_bytes)
        provisioner = FakeProvisioner(config.state_dir / "guests")
    else:
        from stratus_agent.compute.libvirt_driver import LibvirtComputeDriver

        _prepare_state_dir(config.state_dir)
        compute = LibvirtComputeDriver(config.libvirt_uri)
        isolation = config.isolation
        owners = GuestOwners(isolation.uid_first, isolation.uid_count, isolation.gid)
        # Before the manager starts: a guest it restarts must not get a UID already taken.
        owners.adopt(await compute.owners())
        node = NodeProvisioner(
            images if images is not None else image_cache(config),
            GuestFiles(config.state_dir / "guests"),
            OvsBridge(config.network.bridge, config.network.datapath_type, config.network.vsctl),
            virt_type="qemu",
            owners=owners,
            libvirt_qemu_dir=isolation.libvirt_qemu_dir,
        )
        provisioner = node
    manager = GuestManager(
        compute,
        provisioner,
        hub,
        policy=recovery_policy(config),
        restarts=RestartBook(config.state_dir / "guests"),
    )
    await manager.start()
    if isinstance(provisioner, NodeProvisioner):
        provisioner.virt_type = "kvm" if compute.virt_type == "kvm" else "qemu"
        _check_kvm_access(provisioner.virt_type, config.isolation)
    return manager, hub


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
    for directory in (state_dir, state_dir / "images", state_dir / "guests"):
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
    token = config.read_token()
    images = image_cache(config) if config.compute != "fake" else None
    manager, hub = await build(config, images)
    app = create_app(
        manager,
        hub,
        token=token,
        node=config.node_name,
        heartbeat=config.heartbeat_seconds,
        images=images,
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
