"""Networks: the segment each one holds (controllers/segments.py), its Ready condition,
and deletion only once no Instance uses it."""

from __future__ import annotations

from collections.abc import Callable

from stratus_api.reasons import Reason
from stratus_api.v1alpha1 import Network
from stratus_api.v1alpha1.network import NetworkStatus
from stratus_operator.controllers import conditions
from stratus_operator.controllers.segments import (
    Segment,
    SegmentLedger,
    SegmentsExhausted,
    requested,
)
from stratus_operator.services import allocations, node_networks
from stratus_operator.services.runtime import Runtime
from stratus_operator.services.status import ObjectRef
from stratus_operator.services.world import World, instance_on_network, key_of

NetworkChange = Callable[[NetworkStatus, int], NetworkStatus]


class SegmentUnavailable(Exception):
    """The Network cannot have the segment it asks for (another holds it), or none is
    left: the user's move, retried in case the other goes."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NetworkInUse(Exception):
    """A Network's deletion waits while Instances use it."""

    def __init__(self, instances: list[str]) -> None:
        super().__init__(
            f"deletion waits: Instance {', '.join(instances)} uses the network (delete the "
            "Instances, or take the network out of their spec.networks)"
        )


def name_of(network: Network) -> str:
    return f"{network.metadata.namespace}/{network.metadata.name}"


def ledger(world: World, runtime: Runtime) -> SegmentLedger:
    """The segment ledger, built from the Networks' status on first use, oldest first: a
    Network Ready with a segment keeps it. The caller holds runtime.decisions."""
    if runtime.segments is None:
        book = SegmentLedger()
        by_age = sorted(world.networks(), key=lambda n: (
            str(n.metadata.creation_timestamp or ""), key_of(n)))  # fmt: skip
        for network in by_age:
            status = network.status
            if status is None or not conditions.is_true(status.conditions, conditions.READY):
                continue
            segment = requested(network.spec, status.segmentation_id)
            if segment is not None:
                book.hold(network.metadata.uid or "", name_of(network), segment)
        runtime.segments = book
    return runtime.segments


async def settle(network: Network, world: World, runtime: Runtime) -> NetworkChange:
    """The Network's segment: the one its spec asks for, else the one it had, else a new
    VNI; the status change to write. SegmentUnavailable when another Network holds it."""
    uid, name = network.metadata.uid or "", name_of(network)
    async with runtime.decisions:
        book = ledger(world, runtime)
        wanted = requested(network.spec)
        if wanted is not None:
            other = book.hold(uid, name, wanted)
            if other is not None:
                raise SegmentUnavailable(wanted.field, f"{wanted.describe()} is used by "
                                         f"Network {other}")  # fmt: skip
            segment: Segment = wanted
        else:
            had = network.status.segmentation_id if network.status else None
            previous = requested(network.spec, had)
            held = book.of(uid)
            if held is not None:
                segment = held
            elif previous is not None and book.hold(uid, name, previous) is None:
                segment = previous
            else:
                try:
                    segment = book.allocate_vni(uid, name)
                except SegmentsExhausted as exc:
                    raise SegmentUnavailable("spec.segmentationId", str(exc)) from None
    return ready(segment)


def ready(segment: Segment) -> NetworkChange:
    def change(status: NetworkStatus, generation: int) -> NetworkStatus:
        return status.model_copy(
            update={
                "segmentation_id": segment.id or None,
                "observed_generation": generation,
                "conditions": conditions.with_progress(
                    status.conditions, ready=True, reason=Reason.READY,
                    message=f"instances can attach; {segment.describe()}",
                    generation=generation,
                ),
            }
        )  # fmt: skip

    return change


def unavailable(problem: SegmentUnavailable) -> NetworkChange:
    def change(status: NetworkStatus, generation: int) -> NetworkStatus:
        return status.model_copy(
            update={
                "segmentation_id": None,
                "observed_generation": generation,
                "conditions": conditions.with_progress(
                    status.conditions, ready=False, reason=Reason.SEGMENT_IN_USE,
                    message=str(problem), generation=generation, stalled=True,
                ),
            }
        )  # fmt: skip

    return change


def waiting(problem: NetworkInUse) -> NetworkChange:
    def change(status: NetworkStatus, generation: int) -> NetworkStatus:
        return status.model_copy(
            update={
                "conditions": conditions.with_progress(
                    status.conditions, ready=False, reason=Reason.NETWORK_IN_USE,
                    message=str(problem), generation=generation, reconciling=True,
                ),
            }
        )  # fmt: skip

    return change


async def write_status(network: Network, runtime: Runtime, change: NetworkChange) -> None:
    await runtime.status.write(
        ObjectRef.of(network), network.status, network.metadata.generation or 0, change,
        NetworkStatus,
    )  # fmt: skip


async def count(network: Network, world: World, runtime: Runtime) -> None:
    """Write how many addresses the Network has handed out, if that changed."""
    if network.metadata.deletion_timestamp:
        return  # its ledger goes with it
    async with runtime.decisions:
        allocated = len(allocations.ledger(network, world, runtime))
    if network.status is not None and network.status.allocated == allocated:
        return

    def counted(status: NetworkStatus, _generation: int) -> NetworkStatus:
        return status.model_copy(update={"allocated": allocated})

    await write_status(network, runtime, counted)


async def remove(network: Network, world: World, runtime: Runtime) -> None:
    """Free the Network's segment and addresses once no Instance names it (NetworkInUse
    until then)."""
    users = [world.instance(uid) for uid in world.network_users(key_of(network))]
    names = sorted(i.metadata.name or "" for i in users if i is not None)
    if names:
        raise NetworkInUse(names)
    uid = network.metadata.uid or ""
    await node_networks.publish(network, world, runtime, resync=False)  # nodes forget it
    async with runtime.decisions:
        ledger(world, runtime).release(uid)
        namespace, name = key_of(network)
        runtime.addresses.pop((namespace, name, uid), None)
    runtime.node_network_built.pop(uid, None)
    runtime.memberships.drop(instance_on_network(namespace, name))
