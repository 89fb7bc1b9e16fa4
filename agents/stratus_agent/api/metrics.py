"""The agent's Prometheus metrics (prometheus-client).

Request counters and latencies are kept as requests are served (AgentMetrics). Everything
about guests, the node and its image cache is read when scraped (the hypervisor's counters
for every guest in one call) and emitted by a collector made for that scrape alone, so a
guest that is gone leaves no stale series behind.

Guests are labelled by their Instance: namespace, name and uid (never `instance`, which
Prometheus sets on every target itself); disks by their guest-side device (vda), NICs by
their index in the spec: bounded per guest.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from stratus_agent.base import DiskStats, GuestStats, ImageCacheStats, ImageStore, NicStats
from stratus_agent.manager.guests import GuestManager
from stratus_api.guest import GuestSpec, GuestState

log = logging.getLogger(__name__)

GUEST_LABELS = ("namespace", "name", "uid")
T = TypeVar("T")


class AgentMetrics:
    """What the API counts as it serves."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "stratus_agent_requests",
            "API requests by route and status code.",
            ["method", "route", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "stratus_agent_request_seconds",
            "API request latency (event streams excluded).",
            ["method", "route"],
            registry=self.registry,
        )
        self.streams = Gauge(
            "stratus_agent_event_streams", "Open event streams.", registry=self.registry
        )


@dataclass(frozen=True)
class Labelled:
    """One guest's stats with its labels' values (GUEST_LABELS)."""

    labels: tuple[str, str, str]
    stats: GuestStats


@dataclass(frozen=True)
class Scrape:
    """What one scrape read. None: that part could not be read (`read` says which)."""

    read: dict[str, bool]  # part -> whether it was read
    states: dict[str, int] | None = None  # guests by GuestState
    guests: list[Labelled] | None = None
    capacity: tuple[int, int] | None = None  # (vCPUs, memory bytes)
    allocated: tuple[int, int] | None = None
    images: ImageCacheStats | None = None


async def _part(read: dict[str, bool], what: str, reader: Callable[[], Awaitable[T]]) -> T | None:
    """One part of a scrape; a failure (libvirtd restarting) leaves the rest readable."""
    try:
        value = await reader()
    except Exception as exc:
        log.warning("metrics: cannot read %s: %s: %s", what, type(exc).__name__, exc)
        read[what] = False
        return None
    read[what] = True
    return value


def label_guests(specs: dict[str, GuestSpec], stats: Iterable[GuestStats]) -> list[Labelled]:
    """Name each guest's Instance by the spec the manager holds, else by what the driver
    read from its definition (a guest found running when the agent started, whose spec
    the operator has not sent again). One neither can name has no series."""
    labelled = []
    for guest in stats:
        spec = specs.get(guest.uid)
        namespace, name = (spec.namespace, spec.name) if spec else (guest.namespace, guest.name)
        if namespace is not None and name is not None:
            labelled.append(Labelled((namespace, name, guest.uid), guest))
    return labelled


def allocation(specs: dict[str, GuestSpec], stats: Iterable[GuestStats]) -> tuple[int, int]:
    """(vCPUs, memory bytes) the node's guests are given, whatever their state: by their
    specs, and by their definitions for guests the manager holds no spec of."""
    cpus = sum(spec.cpu for spec in specs.values())
    memory = sum(spec.memory_bytes for spec in specs.values())
    for guest in stats:
        if guest.uid not in specs:
            cpus += guest.vcpus
            memory += guest.memory_bytes
    return cpus, memory


async def read(manager: GuestManager, images: ImageStore | None) -> Scrape:
    done: dict[str, bool] = {}
    inventory = await _part(done, "inventory", manager.inventory)
    states = None
    if inventory is not None:
        states = {state.value: 0 for state in GuestState}
        for status in inventory:
            states[status.state.value] += 1
    stats = await _part(done, "guests", manager.compute.guest_stats)
    capacity = await _part(done, "capacity", manager.compute.capacity)
    cached = await _part(done, "images", images.stats) if images is not None else None
    specs = manager.specs()
    return Scrape(
        read=done,
        states=states,
        guests=label_guests(specs, stats) if stats is not None else None,
        capacity=capacity,
        # Without the guests' stats the sum could miss guests the manager holds no spec
        # of: better none than a wrong one.
        allocated=allocation(specs, stats) if stats is not None else None,
        images=cached,
    )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _node_families(scrape: Scrape) -> Iterator[Metric]:
    success = GaugeMetricFamily(
        "stratus_agent_scrape_collector_success",
        "Whether this scrape could read each part of the node's state (1) or not (0).",
        labels=["collector"],
    )
    for part, ok in sorted(scrape.read.items()):
        success.add_metric([part], 1.0 if ok else 0.0)
    yield success
    if scrape.states is not None:
        guests = GaugeMetricFamily(
            "stratus_agent_guests", "Guests on this node by state.", labels=["state"]
        )
        for state, count in scrape.states.items():
            guests.add_metric([state], count)
        yield guests
    if scrape.capacity is not None:
        cpus, memory = scrape.capacity
        yield _gauge("stratus_node_capacity_vcpus", "CPUs of the node.", cpus)
        yield _gauge("stratus_node_capacity_memory_bytes", "Memory of the node.", memory)
    if scrape.allocated is not None:
        cpus, memory = scrape.allocated
        yield _gauge("stratus_node_allocated_vcpus", "vCPUs of the node's guests, any state.",
                     cpus)  # fmt: skip
        yield _gauge("stratus_node_allocated_memory_bytes",
                     "Memory of the node's guests, any state.", memory)  # fmt: skip
    if scrape.images is not None:
        cached = scrape.images
        yield _gauge("stratus_image_cache_images", "Images in the node's cache.", cached.images)
        yield _gauge("stratus_image_cache_bytes", "Bytes the cached images take on disk.",
                     cached.bytes)  # fmt: skip
        yield CounterMetricFamily(
            "stratus_image_cache_hits", "Image lookups the cache answered.", value=cached.hits
        )
        yield CounterMetricFamily(
            "stratus_image_cache_misses",
            "Image lookups that had to download the image.",
            value=cached.misses,
        )


# (metric name, help, field) of the counters per disk and per NIC.
_DISK_COUNTERS = (
    ("stratus_guest_disk_read_bytes", "Bytes read from the disk.", "read_bytes"),
    ("stratus_guest_disk_write_bytes", "Bytes written to the disk.", "write_bytes"),
    ("stratus_guest_disk_read_requests", "Read requests to the disk.", "read_requests"),
    ("stratus_guest_disk_write_requests", "Write requests to the disk.", "write_requests"),
    ("stratus_guest_disk_read_seconds", "Time spent on reads; divided by the rate of read "
     "requests, the mean read latency.", "read_seconds"),
    ("stratus_guest_disk_write_seconds", "Time spent on writes; divided by the rate of write "
     "requests, the mean write latency.", "write_seconds"),
)  # fmt: skip
_NIC_COUNTERS = (
    ("stratus_guest_network_receive_bytes", "Bytes the NIC received.", "receive_bytes"),
    ("stratus_guest_network_transmit_bytes", "Bytes the NIC sent.", "transmit_bytes"),
    ("stratus_guest_network_receive_packets", "Packets the NIC received.", "receive_packets"),
    ("stratus_guest_network_transmit_packets", "Packets the NIC sent.", "transmit_packets"),
    ("stratus_guest_network_receive_errors", "Receive errors.", "receive_errors"),
    ("stratus_guest_network_transmit_errors", "Transmit errors.", "transmit_errors"),
    ("stratus_guest_network_receive_drops", "Received packets dropped.", "receive_drops"),
    ("stratus_guest_network_transmit_drops", "Packets to send dropped.", "transmit_drops"),
)
# (metric name, help, field) of the guest-wide values; counters first.
_GUEST_COUNTERS = (
    ("stratus_guest_cpu_seconds", "CPU time of the guest's whole QEMU process (vCPUs, "
     "device emulation, I/O), since it started.", "cpu_seconds"),
    ("stratus_guest_vcpu_seconds", "CPU time of the guest's vCPUs, since it started.",
     "vcpu_seconds"),
)  # fmt: skip
_GUEST_GAUGES = (
    ("stratus_guest_vcpus", "vCPUs the guest has.", "vcpus"),
    ("stratus_guest_memory_bytes", "Memory the guest is defined with.", "memory_bytes"),
    ("stratus_guest_memory_balloon_bytes", "Memory the guest has now (its balloon).",
     "balloon_bytes"),
    ("stratus_guest_memory_resident_bytes", "Host memory the guest's QEMU process holds.",
     "resident_bytes"),
)  # fmt: skip
_SUFFIX = " Per guest, labelled by its Instance."


def _per_device(
    guests: Sequence[Labelled],
    table: Sequence[tuple[str, str, str]],
    label: str,
    devices: Callable[[GuestStats], Iterable[tuple[str, DiskStats | NicStats]]],
) -> Iterator[Metric]:
    for name, doc, field in table:
        family = CounterMetricFamily(name, doc + _SUFFIX, labels=[*GUEST_LABELS, label])
        for guest in guests:
            for device, stats in devices(guest.stats):
                family.add_metric([*guest.labels, device], getattr(stats, field))
        yield family


def _guest_families(guests: Sequence[Labelled]) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        "stratus_guest_state",
        "1 for the guest's current state as the hypervisor names it (running, paused, "
        "shutoff, crashed, ...)." + _SUFFIX,
        labels=[*GUEST_LABELS, "state"],
    )
    for guest in guests:
        state.add_metric([*guest.labels, guest.stats.state], 1.0)
    yield state
    kinds = [(CounterMetricFamily, _GUEST_COUNTERS), (GaugeMetricFamily, _GUEST_GAUGES)]
    for kind, table in kinds:
        for name, doc, field in table:
            family = kind(name, doc + _SUFFIX, labels=list(GUEST_LABELS))
            for guest in guests:
                value = getattr(guest.stats, field)
                if value is not None:  # None: not running, nothing to count
                    family.add_metric(list(guest.labels), value)
            yield family
    yield from _per_device(guests, _DISK_COUNTERS, "device",
                           lambda g: ((d.device, d) for d in g.disks))  # fmt: skip
    yield from _per_device(guests, _NIC_COUNTERS, "interface",
                           lambda g: ((str(n.index), n) for n in g.nics))  # fmt: skip


class ScrapeCollector:
    """The agent's own metrics and those of one scrape, as one exposition."""

    def __init__(self, metrics: AgentMetrics, scrape: Scrape) -> None:
        self.metrics = metrics
        self.scrape = scrape

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics.registry.collect()
        yield from _node_families(self.scrape)
        if self.scrape.guests is not None:
            yield from _guest_families(self.scrape.guests)


def render(metrics: AgentMetrics, scrape: Scrape) -> bytes:
    return generate_latest(ScrapeCollector(metrics, scrape))
