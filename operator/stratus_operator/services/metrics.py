"""The operator's Prometheus metrics (prometheus-client).

Counters and histograms are updated where the work happens: handlers, the scheduler, the
API server's and the agents' clients. The state of objects, Hypervisors, address pools and
agent streams is read from kopf's indexes at scrape time, so keeping it costs nothing
between scrapes and a scrape costs one pass over them.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable, Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stratus_api.v1alpha1 import Hypervisor, Network
from stratus_api.v1alpha1.base import Condition, ConditionStatus, Resource
from stratus_operator.controllers import conditions, ipam
from stratus_operator.controllers.scheduler import REJECTIONS
from stratus_operator.services.agent_client import (
    AgentError,
    AgentLink,
    AgentRejected,
    AgentUnauthorized,
    AgentUnavailable,
)

RECONCILE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
READY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
# Why a Ready condition turned false on purpose or through no fault of the object: its
# next Ready is not its first.
_NOT_FIRST_READY = frozenset({"GuestStopped", "GuestPaused", "NodeUnreachable"})


DISPATCH_REASONS = ("AgentUnavailable", "AgentUnauthorized", "AgentRejected", "AgentBadReply")


def dispatch_reason(exc: AgentError) -> str:
    """A failed agent request's reason, as the conditions name it."""
    if isinstance(exc, AgentUnavailable):
        return "AgentUnavailable"
    if isinstance(exc, AgentUnauthorized):
        return "AgentUnauthorized"
    if isinstance(exc, AgentRejected):
        return "AgentRejected"
    return "AgentBadReply"  # an answer the operator cannot read


def request_labels(method: str, path: str, query: str) -> tuple[str, str]:
    """(verb, resource) of a request to the API server, as the API server names them: the
    resource with its subresource (instances/status), never an object's name."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"]:
        rest = parts[3:]
    else:
        return method.lower(), "other"
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    if not rest:
        return method.lower(), "discovery"
    named = len(rest) >= 2
    resource = rest[0] + (f"/{rest[2]}" if len(rest) >= 3 else "")
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    if method == "GET":
        watching = parse_qs(query).get("watch", [""])[0] in ("1", "true")
        return ("watch" if watching else "get" if named else "list"), resource
    return verbs.get(method, method.lower()), resource


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.reconciles = Counter(
            "stratus_operator_reconciles",
            "Reconciles by kind and result: success, retry (run again later), stalled "
            "(waits for a change to the object) or error (unexpected).",
            ["kind", "result"], registry=registry,
        )  # fmt: skip
        self.reconcile_seconds = Histogram(
            "stratus_operator_reconcile_duration_seconds", "Time one reconcile takes.",
            ["kind"], buckets=RECONCILE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.ready_seconds = Histogram(
            "stratus_operator_time_to_ready_seconds",
            "From an object's creation to its first Ready=True.",
            ["kind"], buckets=READY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.dispatch_errors = Counter(
            "stratus_operator_dispatch_errors",
            "Requests to node agents that failed, by reason.", ["reason"], registry=registry,
        )  # fmt: skip
        self.api_requests = Counter(
            "stratus_operator_kube_requests",
            "Requests to the Kubernetes API server (kopf's included), by verb, resource and "
            "status code (error: no answer).",
            ["verb", "resource", "code"], registry=registry,
        )  # fmt: skip
        self.api_conflicts = Counter(
            "stratus_operator_kube_conflicts",
            "Requests the API server refused with 409 Conflict (by resource: the requests' "
            "code label).", registry=registry,
        )  # fmt: skip
        self.decisions = Counter(
            "stratus_scheduler_decisions",
            "Placement decisions by result: scheduled or unschedulable.",
            ["result"], registry=registry,
        )  # fmt: skip
        self.unschedulable = Counter(
            "stratus_scheduler_rejections",
            "Hypervisors turned down by failed placements, by reason.",
            ["reason"], registry=registry,
        )  # fmt: skip
        self.events_dropped = Counter(
            "stratus_operator_events_dropped",
            "Kubernetes Events not recorded because they came faster than the operator's "
            "event rate (--event-qps, --event-burst), by type.", ["type"], registry=registry,
        )  # fmt: skip
        self.leader = Gauge(
            "stratus_operator_leader", "1 while this replica is the active one, else 0.",
            registry=registry,
        )  # fmt: skip
        # Every known reason from the start, so a dashboard or alert finds them at 0.
        for reason in DISPATCH_REASONS:
            self.dispatch_errors.labels(reason)
        for reason in REJECTIONS:
            self.unschedulable.labels(reason)
        for result in ("scheduled", "unschedulable"):
            self.decisions.labels(result)
        for type_ in ("Normal", "Warning"):
            self.events_dropped.labels(type_)
        self.state = StateCollector()
        registry.register(self.state)
        self._ready_seen: set[str] = set()

    def reconciled(self, kind: str, result: str, seconds: float) -> None:
        """`result`: success, retry, stalled or error (see the counter's help)."""
        self.reconciles.labels(kind, result).inc()
        self.reconcile_seconds.labels(kind).observe(seconds)

    def dispatch_failed(self, exc: AgentError) -> None:
        self.dispatch_errors.labels(dispatch_reason(exc)).inc()

    def event_dropped(self, type_: str) -> None:
        self.events_dropped.labels(type_).inc()

    def scheduled(self, rejections: dict[str, int] | None) -> None:
        """A placement decision; `rejections`: why each Hypervisor was turned down, when
        none fit."""
        self.decisions.labels("unschedulable" if rejections is not None else "scheduled").inc()
        for reason, count in (rejections or {}).items():
            self.unschedulable.labels(reason).inc(count)

    def transition(
        self, kind: str, uid: str, created: str | None, before: list[Condition],
        after: list[Condition],
    ) -> None:  # fmt: skip
        """A status write: its first Ready=True is observed against its creation."""
        ready = conditions.condition(after, conditions.READY)
        if ready is None or ready.status is not ConditionStatus.TRUE or uid in self._ready_seen:
            return
        was = conditions.condition(before, conditions.READY)
        self._ready_seen.add(uid)
        again = was is not None and (
            was.status is ConditionStatus.TRUE or was.reason in _NOT_FIRST_READY
        )
        if created is None or again:
            return
        since = time.time() - _timestamp(created)
        self.ready_seconds.labels(kind).observe(max(since, 0.0))

    def forget(self, uid: str) -> None:
        self._ready_seen.discard(uid)

    def trace(self) -> aiohttp.TraceConfig:
        """Counts every request of an aiohttp session to the API server."""
        config = aiohttp.TraceConfig()

        async def ended(_: Any, __: SimpleNamespace, params: Any) -> None:
            self._count(params.method, params.url, str(params.response.status))

        async def failed(_: Any, __: SimpleNamespace, params: Any) -> None:
            self._count(params.method, params.url, "error")

        config.on_request_end.append(ended)
        config.on_request_exception.append(failed)
        return config

    def _count(self, method: str, url: Any, code: str) -> None:
        verb, resource = request_labels(method, url.path, url.query_string)
        self.api_requests.labels(verb, resource, code).inc()
        if code == "409":
            self.api_conflicts.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collected(self) -> Collected:
        """Every family's samples as of now. Cheap next to writing them out (half of a
        scrape of 10,000 objects, 70 of 140 ms), so a scrape collects on the event loop,
        where kopf's indexes hold still, and writes the text in a thread."""
        return Collected(list(self.registry.collect()))


class Collected(CollectorRegistry):
    """Families collected already, for `generate_latest` to write out anywhere."""

    def __init__(self, families: list[Metric]) -> None:
        super().__init__(auto_describe=False)
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _timestamp(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _ready(obj: Resource) -> tuple[bool, str]:
    """Whether the object is Ready at its current generation, and the Ready reason."""
    found = conditions.condition(_conditions(obj), conditions.READY)
    if found is None:
        return False, ""
    current = found.observed_generation in (None, obj.metadata.generation)
    return found.status is ConditionStatus.TRUE and current, str(found.reason)


def _conditions(obj: Resource) -> list[Condition]:
    found = getattr(getattr(obj, "status", None), "conditions", None)
    return list(found) if isinstance(found, list) else []


def _phase(obj: Resource) -> str:
    phase = getattr(getattr(obj, "status", None), "phase", None)
    return str(phase) if phase is not None else ""


class StateCollector(Collector):
    """Objects, Hypervisors, address pools and agent streams, read at scrape time from
    the sources the handlers hand over once kopf's indexes exist."""

    def __init__(self) -> None:
        self.objects: Callable[[], Iterable[Resource]] = list
        self.links: dict[str, AgentLink] = {}
        # What is placed on a Hypervisor now, (vCPUs, bytes), when the operator knows it;
        # else its status' figures from the last health check.
        self.placed: Callable[[str], tuple[int, int] | None] = lambda _: None

    def collect(self) -> Iterator[Metric]:
        counts: dict[tuple[str, str], int] = {}
        ready = GaugeMetricFamily(
            "stratus_object_ready",
            "1 when the object is Ready at its current generation, else 0; with its phase "
            "and the Ready condition's reason.",
            labels=["kind", "namespace", "name", "phase", "reason"],
        )
        hypervisors: list[Hypervisor] = []
        networks: list[Network] = []
        for obj in self.objects():
            kind, phase = obj.crd.kind, _phase(obj)
            counts[kind, phase] = counts.get((kind, phase), 0) + 1
            is_ready, reason = _ready(obj)
            meta = obj.metadata
            ready.add_metric([kind, meta.namespace or "", meta.name or "", phase, reason],
                             1.0 if is_ready else 0.0)  # fmt: skip
            if isinstance(obj, Hypervisor):
                hypervisors.append(obj)
            elif isinstance(obj, Network):
                networks.append(obj)
        objects = GaugeMetricFamily(
            "stratus_objects", "Stratus objects by kind and phase.", labels=["kind", "phase"]
        )
        for (kind, phase), count in sorted(counts.items()):
            objects.add_metric([kind, phase], count)
        yield objects
        yield ready
        yield from _hypervisor_families(hypervisors, self.placed)
        yield from _network_families(networks)
        yield from self._link_families()

    def _link_families(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "stratus_operator_agent_stream_up",
            "1 while the operator holds the agent's event stream, else 0.",
            labels=["hypervisor"],
        )
        last = GaugeMetricFamily(
            "stratus_operator_agent_last_message_timestamp_seconds",
            "When the agent's event stream last delivered a line (heartbeats included).",
            labels=["hypervisor"],
        )
        for name, link in sorted(self.links.items()):
            up.add_metric([name], 1.0 if link.connected else 0.0)
            if link.last_message:
                last.add_metric([name], link.last_message)
        yield up
        yield last


def _hypervisor_families(
    hypervisors: list[Hypervisor], placed: Callable[[str], tuple[int, int] | None]
) -> Iterator[Metric]:
    def family(name: str, what: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, what, labels=["hypervisor"])

    vcpus = {
        "capacity": family("stratus_hypervisor_capacity_vcpus", "vCPUs the node has."),
        "allocatable": family(
            "stratus_hypervisor_allocatable_vcpus",
            "vCPUs Instances may use: (capacity - reserved) x allocation ratio.",
        ),
        "allocated": family("stratus_hypervisor_allocated_vcpus", "vCPUs of Instances placed."),
    }
    memory = {
        "capacity": family("stratus_hypervisor_capacity_memory_bytes", "Memory the node has."),
        "allocatable": family(
            "stratus_hypervisor_allocatable_memory_bytes",
            "Memory Instances may use: (capacity - reserved) x allocation ratio.",
        ),
        "allocated": family(
            "stratus_hypervisor_allocated_memory_bytes", "Memory of Instances placed."
        ),
    }
    heartbeat = family(
        "stratus_hypervisor_heartbeat_timestamp_seconds",
        "When the agent last answered a health check.",
    )
    for hv in hypervisors:
        status, name = hv.status, hv.metadata.name or ""
        if status is None:
            continue
        for what in ("capacity", "allocatable", "allocated"):
            figures = getattr(status, what)
            now = placed(name) if what == "allocated" else None
            if now is not None:
                vcpus[what].add_metric([name], now[0])
                memory[what].add_metric([name], now[1])
            elif figures is not None:
                vcpus[what].add_metric([name], figures.cpu)
                memory[what].add_metric([name], figures.memory.bytes)
        if status.heartbeat is not None:
            heartbeat.add_metric([name], status.heartbeat.timestamp())
    yield from vcpus.values()
    yield from memory.values()
    yield heartbeat


def _network_families(networks: list[Network]) -> Iterator[Metric]:
    labels = ["namespace", "network"]
    allocated = GaugeMetricFamily(
        "stratus_network_allocated_addresses",
        "Addresses in use on the Network: Instances' and the DHCP servers'.", labels=labels,
    )  # fmt: skip
    capacity = GaugeMetricFamily(
        "stratus_network_capacity_addresses",
        "Addresses the Network's allocation pools hold.", labels=labels,
    )  # fmt: skip
    for net in networks:
        key = [net.metadata.namespace or "", net.metadata.name or ""]
        capacity.add_metric(key, float(ipam.pool_size(net.spec)))
        if net.status is not None and net.status.allocated is not None:
            allocated.add_metric(key, net.status.allocated)
    yield allocated
    yield capacity
