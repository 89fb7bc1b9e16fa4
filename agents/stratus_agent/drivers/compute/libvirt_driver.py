"""The libvirt compute driver: the only module that imports libvirt.

`LibvirtHost` owns the connection and libvirt's event loop thread; `LibvirtGuest` wraps one
domain with the verbs the driver needs; `LibvirtComputeDriver` maps guest specs onto them.
Every libvirt call runs in a worker thread, never on the asyncio loop.

The driver owns the virt type (detected from libvirt's capabilities) and each guest's
console log; the generation its definitions carry is the manager's, written into the
domain's metadata by the builder and only read back here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import libvirt

from stratus_agent import base
from stratus_agent.domain import builder
from stratus_agent.domain import xml as domain_xml
from stratus_agent.drivers.compute import domain_stats
from stratus_agent.errors import ProvisioningError
from stratus_api import naming
from stratus_api.guest import GuestSpec, GuestState, GuestStatus, PowerState
from stratus_api.reasons import GuestFailure
from stratus_api.volume_wire import CephAccess

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 20.0
DETACH_WAIT_SECONDS = 10.0
_EVENT_LOOP_LOCK = threading.Lock()
_event_loop_started = False

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: GuestState.PROVISIONING,
    libvirt.VIR_DOMAIN_RUNNING: GuestState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: GuestState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: GuestState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: GuestState.RUNNING,  # shutting down, still there
    libvirt.VIR_DOMAIN_SHUTOFF: GuestState.STOPPED,
    libvirt.VIR_DOMAIN_CRASHED: GuestState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: GuestState.PAUSED,
}


# The groups of libvirt's bulk statistics a scrape reads, all in one call.
_STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)
# Every domain, active or not, top-level disks only (no backing chains). NOWAIT: a domain
# busy in a job (a shutdown, a hot-unplug) lacks its monitor's counters for this scrape
# rather than holding the whole scrape up to libvirt's job timeout, one domain at a time.
_STATS_FLAGS = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT


_DISK_ERROR = "QEMU paused the guest on a disk I/O error (a full or unreachable volume?)"
_WATCHDOG = "QEMU paused the guest when its watchdog fired"
_MIGRATION_FAILED = "the guest was left paused by a failed post-copy migration"
# Why QEMU or libvirt paused a guest nobody asked to pause (virDomainPausedReason); a pause
# asked for (ours, `virsh suspend`) or part of a job (a snapshot, a save) has no entry.
_PAUSED_BY_ERROR = {
    libvirt.VIR_DOMAIN_PAUSED_IOERROR: _DISK_ERROR,
    libvirt.VIR_DOMAIN_PAUSED_WATCHDOG: _WATCHDOG,
    libvirt.VIR_DOMAIN_PAUSED_CRASHED: "QEMU paused the guest when it panicked",
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED: _MIGRATION_FAILED,
}
# The same, as the detail of a SUSPENDED lifecycle event.
_SUSPENDED_BY_ERROR = {
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR: _DISK_ERROR,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG: _WATCHDOG,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR: "libvirt paused the guest after an error",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED: _MIGRATION_FAILED,
}


def _paused(uid: str, why: str) -> GuestStatus:
    """A paused guest; `why` says what paused it when nobody asked to."""
    reason = GuestFailure.PAUSED_ON_ERROR if why else ""
    return GuestStatus(uid=uid, state=GuestState.PAUSED, reason=reason, message=why)


def _state_status(uid: str, code: int, reason: int) -> GuestStatus:
    """A domain's state and its reason (virDomainGetState) as the guest's status."""
    if code == libvirt.VIR_DOMAIN_PAUSED:
        if reason == libvirt.VIR_DOMAIN_PAUSED_STARTING_UP:
            # libvirt starts QEMU with its vCPUs stopped, and runs them once it is set up.
            return GuestStatus(uid=uid, state=GuestState.PROVISIONING)
        return _paused(uid, _PAUSED_BY_ERROR.get(reason, ""))
    return GuestStatus(uid=uid, state=_STATES.get(code, GuestState.FAILED))


def _event_status(uid: str, event: int, detail: int) -> GuestStatus | None:
    """The status a lifecycle event leaves a guest in; None for events that change none."""
    if event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED:
        return _paused(uid, _SUSPENDED_BY_ERROR.get(detail, ""))
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
        failed = (libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED, libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED)
        return GuestStatus(
            uid=uid, state=GuestState.CRASHED if detail in failed else GuestState.STOPPED
        )
    state = {
        libvirt.VIR_DOMAIN_EVENT_STARTED: GuestState.RUNNING,
        libvirt.VIR_DOMAIN_EVENT_RESUMED: GuestState.RUNNING,
        libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: GuestState.PAUSED,
        libvirt.VIR_DOMAIN_EVENT_CRASHED: GuestState.CRASHED,
        libvirt.VIR_DOMAIN_EVENT_UNDEFINED: GuestState.MISSING,
    }.get(event)
    return GuestStatus(uid=uid, state=state) if state is not None else None


def ensure_traversable(directory: Path) -> None:
    """o+x on a directory QEMU under a per-guest user must pass through: libvirt keeps each
    domain's private files (master key, monitor socket) in a subdirectory of its state
    directory, owned by that domain's user. Debian ships the parent 0750 and resets it on
    package upgrades (upstream ships 0751), so this is checked before every define and
    start, not set once."""
    try:
        mode = directory.stat().st_mode
    except FileNotFoundError:
        return  # libvirt makes it when it starts its first domain
    if not mode & 0o001:
        directory.chmod(mode | 0o001)
        log.info("made %s traversable (o+x) for per-guest QEMU users", directory)


def _start_event_loop() -> None:
    """libvirt delivers events only while its default event loop runs: once per process,
    before the first connection, in a daemon thread."""
    global _event_loop_started  # noqa: PLW0603 - process-wide by libvirt's own design
    with _EVENT_LOOP_LOCK:
        if _event_loop_started:
            return
        # libvirt's default error handler prints every error on stderr, also those handled
        # here (looking up a domain that is gone); each one reaches us as a libvirtError.
        libvirt.registerErrorHandler(lambda _ctx, _error: None, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


class LibvirtGuest:
    """One domain, with high-level verbs. Blocking: call from a worker thread."""

    def __init__(self, domain: libvirt.virDomain) -> None:
        self.domain = domain

    @property
    def uid(self) -> str | None:
        return naming.instance_uid_of_domain(self.domain.name())

    def running(self) -> bool:
        return bool(self.domain.isActive())

    def paused(self) -> bool:
        """Suspended by virDomainSuspend (not a guest's own S3 sleep: resume cannot wake
        that one)."""
        code, _reason = self.domain.state()
        return bool(code == libvirt.VIR_DOMAIN_PAUSED)

    def start(self) -> None:
        if not self.running():
            self.domain.create()

    def suspend(self) -> None:
        """vCPUs stopped, memory and devices kept: resumes where it left off."""
        if self.running() and not self.paused():
            self.domain.suspend()

    def resume(self) -> None:
        if self.paused():
            self.domain.resume()

    def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """ACPI shutdown, then power off if the guest ignores it."""
        if not self.running():
            return
        # Resumed first: a suspended guest cannot see the ACPI button, and a clean
        # shutdown is worth the moment it runs again.
        self.resume()
        with contextlib.suppress(libvirt.libvirtError):
            self.domain.shutdown()  # the guest may ignore ACPI: destroyed below
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.running():
            time.sleep(0.2)
        if self.running():
            self.destroy()

    def destroy(self) -> None:
        if self.running():
            try:
                self.domain.destroy()
            except libvirt.libvirtError:
                if self.running():
                    raise

    def live_disks(self) -> list[domain_xml.Disk]:
        return list(domain_xml.Domain.from_xml(self.domain.XMLDesc(0)).devices.disks)

    def plug_volumes(self, wanted: Sequence[domain_xml.Disk], wait: float) -> None:
        """Bring the running guest's volume disks (those with a serial) to `wanted`: plug
        in the new ones, ask the guest to release the dropped ones, and wait up to `wait`
        seconds until it has (PCI hot-unplug needs the guest to answer the ACPI eject)."""
        live = self.live_disks()
        wanted_serials = {d.serial for d in wanted if d.serial}
        dropped = [d for d in live if d.serial and d.serial not in wanted_serials]
        for disk in dropped:
            try:
                self.domain.detachDeviceFlags(
                    domain_xml.to_text(disk.to_element()), libvirt.VIR_DOMAIN_AFFECT_LIVE
                )
            except libvirt.libvirtError as exc:
                # Already being unplugged (an earlier ask still waits for the guest): the
                # wait below tells whether it went.
                log.info("guest %s: detach of disk %s: %s", self.uid, disk.target_dev, exc)
        plugged = {d.serial for d in live}
        taken = {d.target_dev for d in live} | {d.target_dev for d in wanted}
        for disk in wanted:
            if not disk.serial or disk.serial in plugged:
                continue
            live_targets = {d.target_dev for d in live}
            target = disk.target_dev
            if target in live_targets:
                # Targets shifted in the new definition while the old disks stay plugged
                # where they were: any free name will do, the guest names disks by serial.
                target = next(f"vd{c}" for c in "abcdefghijklmnopqrstuvwxyz"
                              if f"vd{c}" not in taken)  # fmt: skip
                taken.add(target)
            try:
                self.domain.attachDeviceFlags(
                    domain_xml.to_text(replace(disk, target_dev=target).to_element()),
                    libvirt.VIR_DOMAIN_AFFECT_LIVE,
                )
            except libvirt.libvirtError as exc:
                raise ProvisioningError(
                    GuestFailure.VOLUME_ATTACH_FAILED,
                    f"plugging volume disk {disk.serial} into the running guest failed: {exc}",
                ) from exc
        if dropped:
            self._wait_unplugged({d.serial for d in dropped}, wait)

    def _wait_unplugged(self, serials: set[str | None], wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            left = sorted(d.serial or "" for d in self.live_disks() if d.serial in serials)
            if not left:
                return
            if time.monotonic() >= deadline or not self.running():
                break
            time.sleep(0.2)
        if not self.running():
            return  # stopped meanwhile: nothing holds the disks any more
        raise ProvisioningError(
            GuestFailure.VOLUME_DETACH_PENDING,
            f"the guest has not released volume disk(s) {', '.join(left)} yet: it must answer "
            "the ACPI eject request (a paused or still booting guest cannot); the volume "
            "stays attached until it does",
        )

    def resize(self, serial: str, size_bytes: int) -> bool:
        """Grow the plugged disk with `serial`; False if there is none."""
        disk = next((d for d in self.live_disks() if d.serial == serial), None)
        if disk is None:
            return False
        self.domain.blockResize(disk.target_dev, size_bytes, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
        return True

    def undefine(self) -> None:
        flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        self.domain.undefineFlags(flags)

    def describe(self) -> domain_xml.Domain:
        return domain_xml.Domain.from_xml(self.domain.XMLDesc(0))

    def status(self, described: domain_xml.Domain | None = None) -> GuestStatus:
        """State (and what paused it, if nobody asked to), VNC port and the generation the
        definition was built from (the manager's, kept in our metadata, so it survives an
        agent restart); from `described` when the caller has read the definition already."""
        assert self.uid is not None
        described = described or self.describe()
        ports = [g.port for g in described.devices.graphics if g.port is not None and g.port > 0]
        generation = described.metadata.generation if described.metadata is not None else None
        code, reason = self.domain.state()
        return _state_status(self.uid, code, reason).model_copy(
            update={
                "generation": generation,
                "vnc_port": ports[0] if ports and self.running() else None,
            }
        )


class LibvirtHost:
    """The libvirt connection: capabilities, lifecycle events, our guests. Blocking."""

    def __init__(self, uri: str, node: str | None = None, agent: str | None = None) -> None:
        """`node` and `agent` (this agent's node name, and its name on the host): written
        into every domain it defines; domains of other agents on the same libvirtd
        (simulated nodes, other local clouds) are not ours."""
        self.uri = uri
        self.node = node
        self.agent = agent
        self._conn: libvirt.virConnect | None = None
        self._callback_id: int | None = None

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None or not self._conn.isAlive():
            self._conn = libvirt.open(self.uri)
        return self._conn

    def virt_type(self) -> base.VirtType:
        """kvm when libvirt offers it for x86_64 guests, else qemu (TCG)."""
        caps = domain_xml.parse(self.conn.getCapabilities())
        types = {d.get("type") for d in caps.iterfind("guest/arch[@name='x86_64']/domain")}
        return "kvm" if "kvm" in types else "qemu"

    def capacity(self) -> tuple[int, int]:
        _model, memory_mib, cpus, *_ = self.conn.getInfo()
        return int(cpus), int(memory_mib) * 2**20

    def watch(self, callback: Any) -> None:
        self._callback_id = self.conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, callback, None
        )

    def close(self) -> None:
        if self._conn is not None:
            if self._callback_id is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.domainEventDeregisterAny(self._callback_id)
            self._conn.close()
            self._conn = None

    def guest(self, uid: str) -> LibvirtGuest | None:
        try:
            return LibvirtGuest(self.conn.lookupByName(naming.domain_name(uid)))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def guests(self) -> list[LibvirtGuest]:
        """Domains Stratus made for this node (by name and metadata); others on the host,
        another node's among them, are left alone."""
        return [
            LibvirtGuest(domain)
            for domain in self.conn.listAllDomains()
            if naming.instance_uid_of_domain(domain.name()) is not None and self._ours(domain)
        ]

    def _ours(self, domain: libvirt.virDomain) -> bool:
        if self.node is None and self.agent is None:
            return True
        try:
            text = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domain_xml.STRATUS_NS)
            meta = domain_xml.StratusMetadata.from_element(domain_xml.parse(text))
        except (libvirt.libvirtError, domain_xml.DomainXMLError):
            return True  # no metadata of ours: made before nodes were named there
        if meta.agent is not None:
            return meta.agent == self.agent
        return meta.node is None or meta.node == self.node

    def define(self, xml: str) -> LibvirtGuest:
        return LibvirtGuest(self.conn.defineXML(xml))

    def ensure_ceph_secret(self, access: CephAccess) -> str:
        """The libvirt secret holding `access`'s cephx key, defined and given its value
        (again: the CephPool's Secret may have changed); its UUID. One per pool, named by
        the pool's UID, so every node and every restart finds the same one."""
        uuid = naming.ceph_secret_uuid(access.pool_uid)
        usage = naming.ceph_secret_usage(access.user, access.pool_uid)
        try:
            # The key is base64 text; libvirt wants its bytes (it hands QEMU base64 itself).
            value = base64.b64decode(access.key.get_secret_value(), validate=True)
        except (binascii.Error, ValueError):
            raise ProvisioningError(
                GuestFailure.VOLUME_ATTACH_FAILED,
                f"the cephx key of pool {access.pool} (client.{access.user}) is not base64",
            ) from None  # from None: the decoder's message could quote the key
        existing = self._secret(uuid)
        if existing is not None and existing.usageID() != usage:
            existing.undefine()  # the pool's user changed: same UUID, new usage name
        xml = domain_xml.to_text(domain_xml.CephSecret(uuid=uuid, usage_name=usage).to_element())
        self.conn.secretDefineXML(xml).setValue(value)
        return uuid

    def remove_ceph_secret(self, pool_uid: str) -> bool:
        secret = self._secret(naming.ceph_secret_uuid(pool_uid))
        if secret is None:
            return False
        secret.undefine()
        return True

    def _secret(self, uuid: str) -> libvirt.virSecret | None:
        try:
            return self.conn.secretLookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                return None
            raise


class LibvirtComputeDriver:
    def __init__(
        self,
        uri: str = "qemu:///system",
        *,
        console_dir: Path,
        virt_type: base.VirtType | None = None,
        shutdown_grace: float = SHUTDOWN_GRACE_SECONDS,
        qemu_state_dir: Path | None = None,
        detach_wait: float = DETACH_WAIT_SECONDS,
        node: str | None = None,
        agent: str | None = None,
    ) -> None:
        """`console_dir`: where each guest's console log goes. `qemu_state_dir`: libvirt's
        per-domain state directory, kept traversable for guests with users of their own.
        `node` and `agent`: stamped on its domains (see LibvirtHost)."""
        _start_event_loop()
        self.host = LibvirtHost(uri, node, agent)
        # Guests of this node, for the lifecycle callback, which may not call libvirt to
        # tell another node's domain from ours: filled by every listing and every ensure.
        self._mine: set[str] = set()
        # (namespace, name) of each of those guests, from its spec or its definition's
        # metadata, so stats need no extra libvirt call to name the Instance.
        self._identities: dict[str, tuple[str, str]] = {}
        self.console_dir = console_dir
        self.virt_type: base.VirtType = virt_type or "qemu"
        # Seconds a guest gets to power off on ACPI before it is destroyed.
        self.shutdown_grace = shutdown_grace
        # Seconds a running guest gets to release a volume disk dropped from its spec.
        self.detach_wait = detach_wait
        self.qemu_state_dir = qemu_state_dir
        self._forced_virt_type = virt_type
        # A libvirt call in a worker thread outlives the cancelled task that made it, so
        # calls for one guest are serialised by its lock, and a define/start asked for
        # before a delete is skipped when it runs after it: it would bring the guest back.
        self._locks: dict[str, threading.Lock] = {}
        self._deletes: dict[str, int] = {}
        # Destroys this driver makes to restart a guest, whose STOPPED event is its own and
        # not news (the manager would take it for a crash). Shared with libvirt's event
        # thread, hence the lock.
        self._own_stops: dict[str, int] = {}
        self._own_stops_lock = threading.Lock()

    def console_log(self, uid: str) -> Path:
        return self.console_dir / naming.console_log_file(uid)

    def _own_stop(self, uid: str, event: int, detail: int) -> bool:
        """Whether a lifecycle event is the stop half of a restart made here (and so not
        reported). A start ends any such expectation: events come in order, so one still
        pending then was lost, and must not swallow a later real stop."""
        with self._own_stops_lock:
            if event == libvirt.VIR_DOMAIN_EVENT_STARTED:
                self._own_stops.pop(uid, None)
                return False
            destroyed = (
                event == libvirt.VIR_DOMAIN_EVENT_STOPPED
                and detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED
            )
            if destroyed and self._own_stops.get(uid, 0) > 0:
                self._own_stops[uid] -= 1
                return True
            return False

    async def start(self, on_change: base.GuestListener) -> None:
        loop = asyncio.get_running_loop()

        def lifecycle(
            _conn: Any, domain: libvirt.virDomain, event: int, detail: int, _opaque: Any
        ) -> None:
            # Runs in libvirt's event thread. No libvirt calls here (a call from inside a
            # callback can stall the event loop it needs): map the event, hand it over.
            uid = naming.instance_uid_of_domain(domain.name())
            if uid is None or uid not in self._mine:
                return
            status = _event_status(uid, event, detail)
            if status is None or self._own_stop(uid, event, detail):
                return
            # No generation: the manager adds the one it applied.
            loop.call_soon_threadsafe(on_change, status)

        def connect() -> base.VirtType:
            self.host.watch(lifecycle)
            return self._forced_virt_type or self.host.virt_type()

        self.virt_type = await asyncio.to_thread(connect)

    async def stop(self) -> None:
        await asyncio.to_thread(self.host.close)

    def _power_cycle(self, guest: LibvirtGuest, uid: str) -> None:
        """Destroy and start again: a new QEMU process, which boots the current persistent
        definition (a changed CPU or memory count applies) and gets a new domain ID. Not
        virDomainReset: that keeps the old process and its old definition."""
        with self._own_stops_lock:
            self._own_stops[uid] = self._own_stops.get(uid, 0) + 1
        try:
            guest.destroy()
        except BaseException:
            with self._own_stops_lock:
                self._own_stops.pop(uid, None)
            raise
        guest.start()

    async def ensure(
        self, spec: GuestSpec, facts: base.NodeFacts, *, restart: bool = False
    ) -> GuestStatus:
        domain = builder.build_domain(
            spec,
            facts,
            virt_type=self.virt_type,
            console_log=str(self.console_log(spec.uid)),
            node_name=self.host.node,
            agent=self.host.agent,
        )
        self._mine.add(spec.uid)
        self._identities[spec.uid] = (spec.namespace, spec.name)
        xml = domain.to_xml()
        # The guest's RBD disks name their pool's secret: it must hold the key before QEMU
        # opens them (at start, or when one is plugged in live).
        pools = {d.volume.ceph.pool_uid: d.volume.ceph for d in spec.disks
                 if d.volume is not None and d.volume.ceph is not None}  # fmt: skip

        lock = self._locks.setdefault(spec.uid, threading.Lock())
        deletes = self._deletes.get(spec.uid, 0)

        def apply() -> GuestStatus:
            with lock:
                if self._deletes.get(spec.uid, 0) != deletes:
                    return GuestStatus(uid=spec.uid, state=GuestState.MISSING)
                if facts.owner is not None and self.qemu_state_dir is not None:
                    ensure_traversable(self.qemu_state_dir)
                for access in pools.values():
                    self.host.ensure_ceph_secret(access)
                guest = self.host.define(xml)  # updates the persistent definition in place
                if spec.power is PowerState.STOPPED:
                    guest.stop(self.shutdown_grace)
                    return guest.status()
                if restart and guest.running():
                    self._power_cycle(guest, spec.uid)
                elif guest.running():
                    guest.plug_volumes(domain.devices.disks, self.detach_wait)
                guest.start()
                if spec.power is PowerState.PAUSED:
                    guest.suspend()
                else:
                    guest.resume()
                return guest.status()

        return await asyncio.to_thread(apply)

    async def ensure_ceph_secret(self, access: CephAccess) -> str:
        """The pool's libvirt secret, made or updated; its UUID. `ensure` calls it for every
        pool a guest's disks are in, so nothing else needs to."""
        return await asyncio.to_thread(self.host.ensure_ceph_secret, access)

    async def remove_ceph_secret(self, pool_uid: str) -> bool:
        """Forget a pool's key (the pool is gone from the node); True if there was one.
        Deleting a guest keeps it: other guests of the node may use the same pool."""
        return await asyncio.to_thread(self.host.remove_ceph_secret, pool_uid)

    async def resize_disk(self, uid: str, serial: str, size_bytes: int) -> bool:
        lock = self._locks.setdefault(uid, threading.Lock())

        def resize() -> bool:
            with lock:
                guest = self.host.guest(uid)
                if guest is None or not guest.running():
                    return False
                return guest.resize(serial, size_bytes)

        return await asyncio.to_thread(resize)

    async def delete(self, uid: str) -> bool:
        lock = self._locks.setdefault(uid, threading.Lock())
        self._deletes[uid] = self._deletes.get(uid, 0) + 1
        console_log = self.console_log(uid)
        with self._own_stops_lock:
            self._own_stops.pop(uid, None)

        def remove() -> bool:
            with lock:
                guest = self.host.guest(uid)
                if guest is not None:
                    guest.destroy()
                    guest.undefine()
                self._mine.discard(uid)
                self._identities.pop(uid, None)
                try:
                    console_log.unlink(missing_ok=True)
                except OSError as exc:  # the guest is gone; a leftover log is not a failure
                    log.warning("guest %s: cannot remove %s: %s", uid, console_log, exc)
                return guest is not None

        return await asyncio.to_thread(remove)

    async def list(self) -> list[GuestStatus]:
        def collect() -> list[GuestStatus]:
            statuses = []
            guests = self.host.guests()
            self._mine.update(g.uid for g in guests if g.uid is not None)
            for guest in guests:
                # One domain that vanished meanwhile or cannot be read must not hide the rest.
                try:
                    described = guest.describe()
                    statuses.append(guest.status(described))
                except (libvirt.libvirtError, domain_xml.DomainXMLError) as exc:
                    log.warning("skipping domain %s in the inventory: %s", guest.uid, exc)
                    continue
                meta = described.metadata
                if guest.uid is not None and meta is not None:
                    self._identities[guest.uid] = (meta.namespace, meta.name)
            return statuses

        return await asyncio.to_thread(collect)

    async def owners(self) -> dict[str, base.GuestOwner]:
        """The user each defined guest's QEMU runs as, from its persistent definition's DAC
        label: how per-guest users are recovered after an agent restart."""

        def collect() -> dict[str, base.GuestOwner]:
            found = {}
            guests = self.host.guests()
            self._mine.update(g.uid for g in guests if g.uid is not None)
            for guest in guests:
                try:
                    xml = guest.domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                    label = domain_xml.Domain.from_xml(xml).seclabel
                except (libvirt.libvirtError, domain_xml.DomainXMLError) as exc:
                    log.warning("cannot read the label of domain %s: %s", guest.uid, exc)
                    continue
                if guest.uid is not None and label is not None:
                    found[guest.uid] = base.GuestOwner(uid=label.uid, gid=label.gid)
            return found

        return await asyncio.to_thread(collect)

    async def capacity(self) -> tuple[int, int]:
        return await asyncio.to_thread(self.host.capacity)

    async def console_device(self, uid: str) -> str | None:
        """From the live definition: libvirt allocates the pty when the guest starts."""
        found = await self._live(uid, "devices/console[@type='pty']/source", "path")
        return found or None

    async def vnc_port(self, uid: str) -> int | None:
        """From the live definition: libvirt picks the port when the guest starts (a
        lifecycle event's status does not carry it)."""
        found = await self._live(uid, "devices/graphics[@type='vnc']", "port")
        return int(found) if found and found.isdigit() and int(found) > 0 else None

    async def _live(self, uid: str, path: str, attribute: str) -> str | None:
        """An attribute of the running guest's live definition."""

        def read() -> str | None:
            guest = self.host.guest(uid) if uid in self._mine else None
            if guest is None or not guest.running():
                return None
            found = domain_xml.parse(guest.domain.XMLDesc(0)).find(path)
            return found.get(attribute) if found is not None else None

        return await asyncio.to_thread(read)

    async def guest_stats(self) -> builtins.list[base.GuestStats]:
        """One getAllDomainStats call for the whole host; domains not this driver's (other
        agents', anyone's) are dropped by name, without another call."""

        def collect() -> builtins.list[base.GuestStats]:
            found = []
            for domain, record in self.host.conn.getAllDomainStats(_STATS, _STATS_FLAGS):
                uid = naming.instance_uid_of_domain(domain.name())  # no call: held locally
                if uid is None or uid not in self._mine:
                    continue
                namespace, name = self._identities.get(uid, (None, None))
                found.append(domain_stats.guest_stats(uid, record, namespace=namespace, name=name))
            return found

        return await asyncio.to_thread(collect)
