"""An Instance resolved into a guest spec, and agent reports turned into its status."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import SecretBytes

from stratus_api.guest import (
    CloudInit,
    Disk,
    GuestSpec,
    GuestState,
    GuestStatus,
    Nic,
    PowerState,
    VolumeDisk,
)
from stratus_api.imageref import ImageRef
from stratus_api.network_wire import dns_zone
from stratus_api.reasons import ConditionType, GuestFailure, Reason, is_transient
from stratus_api.v1alpha1 import Image, Instance, InstanceType, Network, Volume
from stratus_api.v1alpha1.image import ImagePhase
from stratus_api.v1alpha1.instance import InstancePhase, InstanceStatus, RunStrategy
from stratus_api.validation import FieldProblem
from stratus_api.volume_wire import CephAccess, disk_serial
from stratus_operator.controllers import conditions, waiters
from stratus_operator.controllers.ipam import Allocation

READY = conditions.READY
SCHEDULED = ConditionType.SCHEDULED


class InstanceProblem(Exception):
    """Something stops the Instance from progressing; `reason` and `message` go into its Ready
    condition, `field` names what to fix. `retry` says whether trying again can help (a
    missing dependency may appear); `stalled` whether it is the user's move (Stalled rather
    than Reconciling), by default when retrying cannot help. `waits_on`: the object whose
    change may let it progress (a Network not there yet), as the waiter index keys it."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        field: str = "",
        retry: bool = True,
        stalled: bool | None = None,
        waits_on: waiters.Dependency | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.retry = retry
        self.needs_user = (not retry) if stalled is None else stalled
        self.waits_on = waits_on


@dataclass(frozen=True)
class Size:
    cpu: int
    memory_bytes: int
    disk_bytes: int | None


def resolve_size(instance: Instance, itype: InstanceType | None) -> Size:
    spec = instance.spec
    if spec.instance_type is not None and itype is None:
        raise InstanceProblem(
            Reason.INSTANCE_TYPE_NOT_FOUND,
            f"spec.instanceType: InstanceType {spec.instance_type} not found",
            field="spec.instanceType",
            waits_on=(waiters.INSTANCE_TYPE, "", spec.instance_type),
        )
    cpu = spec.cpu or (itype.spec.cpu if itype else None)
    memory = spec.memory or (itype.spec.memory if itype else None)
    assert cpu is not None and memory is not None  # guaranteed by the schema's CEL rule
    disk = spec.boot.disk_size or (itype.spec.disk if itype else None)
    return Size(cpu, memory.bytes, disk.bytes if disk is not None else None)


def check_image(instance: Instance, image: Image | None, size: Size) -> Image:
    name = instance.spec.boot.image or ""
    on = (waiters.IMAGE, instance.metadata.namespace or "", name)
    if image is None:
        raise InstanceProblem(
            Reason.IMAGE_NOT_FOUND,
            f"spec.boot.image: Image {name} not found",
            field="spec.boot.image",
            waits_on=on,
        )
    status = image.status
    if status is not None and status.phase is ImagePhase.FAILED:
        failed = conditions.condition(status.conditions, READY)
        detail = failed.message if failed else "the Image failed"
        raise InstanceProblem(
            Reason.IMAGE_FAILED, f"spec.boot.image: Image {name} failed: {detail}",
            field="spec.boot.image", retry=False,
        )  # fmt: skip
    min_memory = image.spec.min_memory
    if min_memory is not None and size.memory_bytes < min_memory.bytes:
        raise InstanceProblem(
            Reason.MEMORY_TOO_SMALL,
            f"memory: Image {name} needs at least {min_memory} of memory",
            field="spec.memory",
            retry=False,
        )
    min_disk = image.spec.min_disk
    if min_disk is not None and size.disk_bytes is not None and size.disk_bytes < min_disk.bytes:
        raise InstanceProblem(
            Reason.DISK_TOO_SMALL,
            f"spec.boot.diskSize: Image {name} needs a root disk of at least {min_disk}",
            field="spec.boot.diskSize",
            retry=False,
        )
    if status is None or status.phase is not ImagePhase.READY:
        # Never dispatch on an Image nobody has checked: its source may be refused yet.
        phase = status.phase if status is not None else ImagePhase.PENDING
        raise InstanceProblem(
            Reason.IMAGE_NOT_READY, f"spec.boot.image: Image {name} is {phase}, not Ready yet",
            field="spec.boot.image", waits_on=on,
        )  # fmt: skip
    return image


def nic_for(
    network: Network, allocation: Allocation, mac: str, security_groups: list[str],
    resolver: str | None = None,
) -> Nic:  # fmt: skip
    """The NIC as its node plugs it; `security_groups` as nodes name them (namespace/name);
    `resolver`: the node's DHCP server, which answers the Network's names, asked first."""
    spec = network.spec
    segment = spec.segmentation_id or (network.status.segmentation_id if network.status else None)
    return Nic(
        network=network.metadata.name or "",
        network_uid=network.metadata.uid or "",
        mac=mac,
        address=allocation.address,
        prefix_length=allocation.prefix_length,
        gateway=allocation.gateway,
        dns_servers=[*([resolver] if resolver else []), *allocation.dns_servers],
        dns_search=[dns_zone(network.metadata.namespace or "")] if resolver else [],
        mtu=spec.effective_mtu(),
        segmentation_id=segment,
        network_type=spec.type,
        physical_network=spec.physical_network,
        security_groups=security_groups,
    )


def image_ref(image: Image) -> ImageRef:
    """The Image as a node fetches it into its cache."""
    assert image.metadata.uid
    source = image.spec.source.http
    return ImageRef(
        uid=image.metadata.uid,
        name=image.metadata.name or "",
        url=source.url,
        sha256=source.sha256,
        format=image.spec.format,
    )


def volume_disk(volume: Volume, name: str | None = None, ceph: CephAccess | None = None) -> Disk:
    """A Volume as a disk (named after it, unless `name`); the guest finds it by its
    serial. `ceph`: how the node reaches a ceph Volume's pool."""
    uid = volume.metadata.uid or ""
    return Disk(
        name=name or volume.metadata.name or "",
        volume=VolumeDisk(
            uid=uid,
            backend=volume.spec.backend,
            serial=disk_serial(uid),
            ceph=ceph,
            shareable=volume.spec.shareable,
        ),
    )


def _disks(
    image: Image | None, size: Size, volumes: Sequence[Volume], ceph: Mapping[str, CephAccess]
) -> list[Disk]:
    """The root disk (an overlay on `image`, else the first of `volumes`), then volumes."""
    disks = [volume_disk(v, ceph=ceph.get(v.metadata.uid or "")) for v in volumes]
    if image is None:
        return [disks[0].model_copy(update={"name": "root"}), *disks[1:]]
    return [Disk(name="root", image=image_ref(image), size_bytes=size.disk_bytes), *disks]


def guest_spec(
    instance: Instance,
    size: Size,
    image: Image | None,
    nics: list[Nic],
    user_data: bytes | None,
    volumes: Sequence[Volume] = (),
    ceph: Mapping[str, CephAccess] | None = None,
) -> GuestSpec:
    """`ceph`: the pool access of each ceph Volume, by Volume UID."""
    ceph = ceph or {}
    meta, spec = instance.metadata, instance.spec
    assert meta.uid and meta.name and meta.namespace
    return GuestSpec(
        uid=meta.uid,
        name=meta.name,
        namespace=meta.namespace,
        generation=meta.generation or 0,
        cpu=size.cpu,
        memory_bytes=size.memory_bytes,
        power=Wanted.of(instance).power,
        restart_token=spec.restart_requested_at,
        disks=_disks(image, size, volumes, ceph),
        nics=nics,
        cloud_init=CloudInit(
            instance_id=meta.uid,
            hostname=meta.name,
            user_data=SecretBytes(user_data) if user_data is not None else None,
            ssh_keys=list(spec.ssh_keys),
        ),
    )


_PHASES = {
    GuestState.PROVISIONING: InstancePhase.PROVISIONING,
    GuestState.RUNNING: InstancePhase.RUNNING,
    GuestState.PAUSED: InstancePhase.PAUSED,
    GuestState.STOPPED: InstancePhase.STOPPED,
    GuestState.CRASHED: InstancePhase.FAILED,
    GuestState.FAILED: InstancePhase.FAILED,
    GuestState.MISSING: InstancePhase.PROVISIONING,
}
_POWER = {
    RunStrategy.ALWAYS: PowerState.RUNNING,
    RunStrategy.HALTED: PowerState.STOPPED,
    RunStrategy.PAUSED: PowerState.PAUSED,
}
_SETTLED = {
    PowerState.RUNNING: GuestState.RUNNING,
    PowerState.STOPPED: GuestState.STOPPED,
    PowerState.PAUSED: GuestState.PAUSED,
}


@dataclass(frozen=True)
class Wanted:
    """What the user asked of the guest: its power state, and the last restart request."""

    power: PowerState
    restart_token: str | None = None

    @classmethod
    def of(cls, instance: Instance) -> Wanted:
        spec = instance.spec
        return cls(_POWER[spec.run_strategy], spec.restart_requested_at)


@dataclass(frozen=True)
class Progress:
    """What a guest report means for the Instance's conditions."""

    phase: InstancePhase
    ready: bool
    reason: str
    message: str
    reconciling: bool = False
    stalled: bool = False


def progress_of(guest: GuestStatus, node: str | None, wanted: Wanted) -> Progress:
    state, phase = guest.state, _PHASES[guest.state]
    if state is GuestState.FAILED:
        reason, message = guest.reason or Reason.GUEST_FAILED, guest.message or "the guest failed"
        if is_transient(reason):
            return Progress(
                InstancePhase.PROVISIONING, False, reason,
                f"{message} (the node retries with backoff)", reconciling=True,
            )  # fmt: skip
        return Progress(phase, False, reason, message, stalled=True)
    if state in (GuestState.PROVISIONING, GuestState.MISSING):
        return Progress(phase, False, Reason.PROVISIONING, f"being prepared on {node}",
                        reconciling=True)  # fmt: skip
    restart = wanted.restart_token
    if restart and guest.restart_token != restart and wanted.power is not PowerState.STOPPED:
        return Progress(phase, False, Reason.GUEST_RESTARTING,
                        f"restart requested at {restart}", reconciling=True)  # fmt: skip
    if state is GuestState.PAUSED and guest.reason == GuestFailure.PAUSED_ON_ERROR:
        return Progress(
            phase, False, guest.reason,
            f"{guest.message}; it stays paused: restart the Instance once that is fixed",
            stalled=True,
        )  # fmt: skip
    if state in (GuestState.STOPPED, GuestState.CRASHED) and wanted.power is not PowerState.STOPPED:
        what = "crashed" if state is GuestState.CRASHED else "stopped"
        return Progress(
            phase, False, Reason.GUEST_RESTARTING,
            f"the guest {what}; the node starts it again (runStrategy)", reconciling=True,
        )  # fmt: skip
    if state is not _SETTLED[wanted.power] and state is not GuestState.CRASHED:
        return Progress(phase, False, Reason.PROGRESSING,
                        f"the guest is {state.lower()}, going to {wanted.power.lower()}",
                        reconciling=True)  # fmt: skip
    if state is GuestState.RUNNING:
        return Progress(phase, True, Reason.GUEST_RUNNING, f"running on {node}")
    if state is GuestState.PAUSED:
        return Progress(phase, False, Reason.GUEST_PAUSED, "the guest is paused (runStrategy)")
    if state is GuestState.CRASHED:
        return Progress(phase, False, Reason.GUEST_CRASHED, "the guest crashed")
    return Progress(phase, False, Reason.GUEST_STOPPED, "the guest is shut off")


def with_guest_status(
    status: InstanceStatus,
    guest: GuestStatus,
    generation: int,
    wanted: Wanted,
    placed_on: str | None = None,
) -> InstanceStatus:
    """The Instance status after the agent reported `guest`; `placed_on`: the node the
    operator placed it on, for a report that comes before the status says so."""
    progress = progress_of(guest, status.node or placed_on, wanted)
    applied = guest.generation if guest.generation is not None else status.observed_generation
    update: dict[str, object] = {
        "phase": progress.phase,
        "observed_generation": applied,
        "conditions": conditions.with_progress(
            status.conditions, ready=progress.ready, reason=progress.reason,
            message=progress.message, generation=applied or generation,
            reconciling=progress.reconciling, stalled=progress.stalled,
        ),
    }  # fmt: skip
    if guest.restarts or status.restarts:
        update["restarts"] = max(guest.restarts, status.restarts or 0)
        update["last_restart_reason"] = guest.last_restart_reason or status.last_restart_reason
    if guest.restart_token:
        update["last_restart_request_handled"] = guest.restart_token
    return status.model_copy(update=update)


StatusChange = Callable[[InstanceStatus, int], InstanceStatus]


_HAS_GUEST = (InstancePhase.RUNNING, InstancePhase.PAUSED, InstancePhase.STOPPED)


def failing(
    reason: str, message: str, *, stalled: bool, phase: InstancePhase | None = None
) -> StatusChange:
    def change(status: InstanceStatus, generation: int) -> InstanceStatus:
        # A guest that runs (or is paused or stopped) keeps its phase: only the newer spec
        # is stuck, and the conditions say so. The status is about this generation now:
        # kstatus reads Stalled (Failed) or Reconciling, not a status not yet observed.
        has_guest = status.phase in _HAS_GUEST
        return status.model_copy(
            update={
                "observed_generation": generation,
                "phase": phase or (InstancePhase.FAILED if stalled and not has_guest
                                   else status.phase),
                "conditions": conditions.with_progress(
                    status.conditions, ready=False, reason=reason, message=message,
                    generation=generation, reconciling=not stalled, stalled=stalled,
                ),
            }
        )  # fmt: skip

    return change


def with_problem(problem: InstanceProblem) -> StatusChange:
    return failing(problem.reason, str(problem), stalled=problem.needs_user)


def unschedulable(why: str) -> StatusChange:
    def change(status: InstanceStatus, generation: int) -> InstanceStatus:
        waiting = failing(Reason.UNSCHEDULABLE, why, stalled=False, phase=InstancePhase.SCHEDULING)
        updated = waiting(status, generation)
        return updated.model_copy(
            update={
                "conditions": conditions.set_condition(
                    updated.conditions, SCHEDULED, False, Reason.UNSCHEDULABLE, why, generation
                )
            }
        )

    return change


def invalid(problems: Sequence[FieldProblem]) -> StatusChange:
    """The operator cannot read the Instance (admission and the models disagree): say which
    field, stall, and leave the guest alone."""
    detail = "; ".join(str(problem) for problem in problems) or "the spec cannot be read"
    return failing(Reason.INVALID_SPEC, detail, stalled=True, phase=None)
