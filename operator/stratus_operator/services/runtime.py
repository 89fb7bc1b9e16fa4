"""What the operator holds while it runs: settings, API access, agent clients, ledgers.

Built once at startup and handed to handlers through kopf's memo.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from stratus_api.network_wire import NodeNetworkSpec
from stratus_api.security_group_wire import NodeSecurityGroupSpec
from stratus_api.v1alpha1 import Hypervisor
from stratus_api.v1alpha1.hypervisor import HypervisorSpec
from stratus_operator.controllers.addressing import NetworkLedger
from stratus_operator.controllers.placement import PlacementLedger
from stratus_operator.controllers.segments import SegmentLedger
from stratus_operator.controllers.waiters import Waiters
from stratus_operator.services.agent_client import AgentClient, AgentEndpoint, AgentError
from stratus_operator.services.events import EventRecorder
from stratus_operator.services.kube import Kube
from stratus_operator.services.memberships import Memberships
from stratus_operator.services.metrics import OperatorMetrics
from stratus_operator.services.settings import OperatorSettings
from stratus_operator.services.status import StatusWriter

S = TypeVar("S")  # a kind's status model
N = TypeVar("N")  # a kind of node spec


class Revisions:
    """Names for the versions of node specs sent (stratus_api.spec_changes): this process's
    own prefix, so no other operator's (a leader before it) matches one by chance, and a
    counter."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._count = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}-{next(self._count)}"


@dataclass(frozen=True)
class Told(Generic[N]):
    """What a node was last told of an object: the spec as built (compared by identity: built
    specs are kept until their inputs change) and as sent, with the revision it holds."""

    built: N
    sent: N


class AgentNotConfigured(Exception):
    """The Hypervisor's token Secret is missing or lacks its key."""


class AgentPool:
    """One client per Hypervisor, rebuilt when its spec or token changes.

    The token Secret is read when a client is first made and on `refresh` (the periodic
    health check), not on every call: reconciling an Instance costs no Secret read.
    """

    def __init__(
        self, kube: Kube, timeout: float, on_error: Callable[[AgentError], None] | None = None
    ) -> None:
        self._kube = kube
        self._timeout = timeout
        self._on_error = on_error
        self._clients: dict[str, tuple[HypervisorSpec, AgentEndpoint, AgentClient]] = {}

    async def endpoint(self, hypervisor: Hypervisor) -> AgentEndpoint:
        ref = hypervisor.spec.token_secret_ref
        data = await self._kube.secret_data(ref.namespace, ref.name)
        if data is None:
            raise AgentNotConfigured(
                f"spec.tokenSecretRef: Secret {ref.namespace}/{ref.name} not found"
            )
        if ref.key not in data:
            raise AgentNotConfigured(
                f"spec.tokenSecretRef: Secret {ref.namespace}/{ref.name} has no key {ref.key}"
            )
        return AgentEndpoint(
            url=hypervisor.spec.endpoint,
            token=data[ref.key].decode().strip(),
            ca_pem=data.get("ca.crt"),
        )

    async def client(self, hypervisor: Hypervisor, *, refresh: bool = False) -> AgentClient:
        name = hypervisor.metadata.name or ""
        known = self._clients.get(name)
        if known is not None and known[0] == hypervisor.spec and not refresh:
            return known[2]
        endpoint = await self.endpoint(hypervisor)
        if known is not None and known[1] == endpoint:
            self._clients[name] = (hypervisor.spec, endpoint, known[2])
            return known[2]
        if known is not None:
            await known[2].close()
        fresh = AgentClient(endpoint, timeout=self._timeout, on_error=self._on_error)
        await fresh.__aenter__()
        self._clients[name] = (hypervisor.spec, endpoint, fresh)
        return fresh

    async def forget(self, name: str) -> None:
        known = self._clients.pop(name, None)
        if known is not None:
            await known[2].close()

    async def close(self) -> None:
        for name in list(self._clients):
            await self.forget(name)


@dataclass(frozen=True)
class Binding:
    """A floating address a Router maps onto a fixed one."""

    router_uid: str
    address: str
    fixed: str


@dataclass
class Runtime:
    settings: OperatorSettings
    kube: Kube
    agents: AgentPool
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    # What this process decided: placements and addresses, rebuilt from the watched
    # Instances on first use, then kept in step (see instances.py). One lock orders the
    # decisions, so concurrent creates get the answers they would get one at a time.
    placements: PlacementLedger = field(default_factory=PlacementLedger)
    addresses: dict[tuple[str, str, str], NetworkLedger] = field(default_factory=dict)
    segments: SegmentLedger | None = None  # built from the Networks' status on first use
    decisions: asyncio.Lock = field(default_factory=asyncio.Lock)
    seeded: bool = False
    # The sequence of the newest agent report applied per guest, volume or snapshot UID: an
    # inventory read before an event already applied must not turn a Running guest back to
    # Provisioning, nor a PUT's answer a Ready snapshot back to Creating (see `newest`).
    reported: dict[str, int] = field(default_factory=dict)
    # Guest reports that changed nothing, per guest UID: (the Instance's resourceVersion,
    # the report without its sequence). Every health check reports every guest again; one
    # that says the same about the same Instance is not worked out again (O(1), not a
    # status derived and compared, for each of 10,000 guests every 10 s).
    settled: dict[str, tuple[str, dict[str, object]]] = field(default_factory=dict)
    # Local Volumes bound to a node (Volume UID -> node) before their status says so.
    volume_nodes: dict[str, str] = field(default_factory=dict)
    # The node each Router was placed on (Router UID -> node), before its status says so.
    router_nodes: dict[str, str] = field(default_factory=dict)
    # The floating addresses each Router maps (FloatingIP UID -> Binding), seeded from the
    # FloatingIPs' status on first use (see routers.floating_of).
    floating: dict[str, Binding] = field(default_factory=dict)
    floating_seeded: bool = False
    # One reconcile at a time per object (handler, daemon and FloatingIPs all build Routers).
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    # Which Instance each Volume is attached to (Volume UID -> Instance UID).
    volume_holders: dict[str, str] = field(default_factory=dict)
    # The Instances each shareable Volume is attached to (Volume UID -> Instance UID -> name).
    volume_sharers: dict[str, dict[str, str]] = field(default_factory=dict)
    # What each node was last told about each Network (Network UID -> node -> Told, None
    # when it did not answer), so a node hears again only when its share changes, and then
    # only what changed (see node_shares.py).
    node_networks: dict[str, dict[str, Told[NodeNetworkSpec] | None]] = field(default_factory=dict)
    # ... and the node specs last built for each, under the inputs they were built from.
    node_network_built: dict[str, tuple[object, dict[str, NodeNetworkSpec]]] = field(
        default_factory=dict
    )
    # Each Network's and group's member Instances, kept from their events.
    memberships: Memberships = field(default_factory=Memberships)
    # What each node was told of each SecurityGroup (UID -> node -> Told, None when it did
    # not answer), and the status last written from (see security_groups.py).
    security_group_nodes: dict[str, dict[str, Told[NodeSecurityGroupSpec] | None]] = field(
        default_factory=dict
    )
    security_group_seen: dict[str, object] = field(default_factory=dict)
    # ... and each group's node spec, under the inputs it was built from.
    security_group_built: dict[str, tuple[object, NodeSecurityGroupSpec]] = field(
        default_factory=dict
    )
    revisions: Revisions = field(default_factory=Revisions)
    # Instances waiting on a dependency, run again when it changes (services/wakeups.py),
    # the tasks doing so, and the one that runs those whose safety retry is due.
    waiters: Waiters = field(default_factory=Waiters)
    wakeups: set[asyncio.Task[None]] = field(default_factory=set)
    waiting_sweeper: asyncio.Task[None] | None = None
    # Namespaces whose group `default` this process made (until the watch brings it).
    default_groups_made: set[str] = field(default_factory=set)
    events: EventRecorder = field(init=False)
    status: StatusWriter = field(init=False)

    def lock(self, uid: str) -> asyncio.Lock:
        return self.locks.setdefault(uid, asyncio.Lock())

    def newest(self, uid: str, sequence: int | None) -> bool:
        """Whether a node's report (its sequence) is not older than one already applied for
        `uid`; if so it counts as applied from now on. Unstamped reports always count."""
        if sequence is None:
            return True
        if sequence < self.reported.get(uid, 0):
            return False
        self.reported[uid] = sequence
        return True

    def unless_older(
        self, uid: str, sequence: int | None, change: Callable[[S, int], S]
    ) -> Callable[[S, int], S]:
        """`change` (a node's answer to a PUT), applied when written only if no newer report
        of `uid` was applied by then: the node's events may be written before the answer
        (a fast copy is Ready before the PUT's Creating is), and it must not undo them."""

        def guarded(status: S, generation: int) -> S:
            return change(status, generation) if self.newest(uid, sequence) else status

        return guarded

    def __post_init__(self) -> None:
        self.events = EventRecorder(self.kube, self.settings.events, self.metrics.event_dropped)
        self.status = StatusWriter(
            self.kube, self.events, self.settings.status.coalesce_seconds, self.metrics
        )
