"""The operator's metrics as plain code: request labels, address pool sizes, the first
Ready, and an exposition promtool accepts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client import generate_latest

from stratus_api.v1alpha1 import Hypervisor, Image, Network
from stratus_api.v1alpha1.base import Condition
from stratus_operator.controllers import ipam
from stratus_operator.services.agent_client import (
    AgentError,
    AgentLink,
    AgentRejected,
    AgentUnauthorized,
    AgentUnavailable,
)
from stratus_operator.services.metrics import OperatorMetrics, dispatch_reason, request_labels
from testsupport import promtool_check_metrics, sample, samples


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/apis/stratus.io/v1alpha1/namespaces/a/instances", "watch=true",
         ("watch", "instances")),
        ("GET", "/apis/stratus.io/v1alpha1/instances", "", ("list", "instances")),
        ("GET", "/api/v1/namespaces/a/secrets/tok", "", ("get", "secrets")),
        ("PATCH", "/apis/stratus.io/v1alpha1/namespaces/a/instances/web/status", "",
         ("patch", "instances/status")),
        ("POST", "/api/v1/namespaces/a/events", "", ("create", "events")),
        ("PUT", "/apis/coordination.k8s.io/v1/namespaces/s/leases/op", "", ("update", "leases")),
        ("DELETE", "/apis/stratus.io/v1alpha1/hypervisors/n1", "", ("delete", "hypervisors")),
        ("GET", "/api/v1/namespaces", "", ("list", "namespaces")),
        ("GET", "/apis/stratus.io/v1alpha1", "", ("get", "discovery")),
        ("GET", "/version", "", ("get", "other")),
    ],
)  # fmt: skip
def test_requests_are_labelled_by_verb_and_resource_never_by_name(
    method: str, path: str, query: str, expected: tuple[str, str]
) -> None:
    assert request_labels(method, path, query) == expected


def network(*subnets: dict[str, Any]) -> Network:
    return Network.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Network",
        "metadata": {"name": "net", "namespace": "a", "uid": "u-net"},
        "spec": {"subnets": list(subnets)}, "status": {"allocated": 3},
    })  # fmt: skip


def test_a_pool_holds_its_addresses_less_network_broadcast_and_gateway() -> None:
    assert ipam.pool_size(network({"cidr": "10.0.0.0/24", "gateway": "10.0.0.1"}).spec) == 253
    pools = {"cidr": "10.0.0.0/24", "gateway": "10.0.0.1", "allocationPools": ["10.0.0.0/28"]}
    assert ipam.pool_size(network(pools).spec) == 14  # 16, less network and gateway
    two = ({"cidr": "10.0.0.0/30"}, {"cidr": "fd00::/126", "gateway": "fd00::1"})
    assert ipam.pool_size(network(*two).spec) == 2 + 2


def conditions(status: str, reason: str) -> list[Condition]:
    found = {"type": "Ready", "status": status, "reason": reason, "message": "",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    return [Condition.model_validate(found)]


def test_time_to_ready_counts_each_object_once_from_its_creation() -> None:
    metrics = OperatorMetrics()
    created = "2020-01-01T00:00:00Z"
    metrics.transition("Instance", "u1", created, [], conditions("False", "Provisioning"))
    metrics.transition("Instance", "u1", created, conditions("False", "Provisioning"),
                       conditions("True", "Running"))  # fmt: skip
    # Stopped and started again, a restart: not a first Ready.
    metrics.transition("Instance", "u1", created, conditions("False", "GuestStopped"),
                       conditions("True", "Running"))  # fmt: skip
    # Another object, Ready again after its node came back (the operator restarted meanwhile).
    metrics.transition("Instance", "u2", created, conditions("Unknown", "NodeUnreachable"),
                       conditions("True", "Running"))  # fmt: skip
    found = samples(metrics.render().decode())
    assert sample(found, "stratus_operator_time_to_ready_seconds_count", kind="Instance") == 1
    total = sample(found, "stratus_operator_time_to_ready_seconds_sum", kind="Instance") or 0
    assert total > 3600 * 24 * 365  # since 2020


def test_failed_agent_requests_are_counted_by_the_reason_conditions_give() -> None:
    args = ("https://n", "PUT /v1/guests/x", "detail")
    assert dispatch_reason(AgentUnavailable(*args)) == "AgentUnavailable"
    assert dispatch_reason(AgentUnauthorized(*args)) == "AgentUnauthorized"
    assert dispatch_reason(AgentRejected(*args, status=422, error="Invalid")) == "AgentRejected"
    assert dispatch_reason(AgentError(*args)) == "AgentBadReply"


def image_in(phase: str, *, ready: str, reason: str, generation: int) -> Image:
    """The Image a/img at `generation`, in `phase`, its Ready condition `ready` for `reason`
    and observed at that generation."""
    return Image.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Image",
        "metadata": {"name": "img", "namespace": "a", "generation": generation},
        "spec": {"source": {"http": {"url": "http://x/i.qcow2"}}},
        "status": {"phase": phase, "conditions": [
            {"type": "Ready", "status": ready, "reason": reason, "message": "m",
             "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": generation}]},
    })  # fmt: skip


def test_the_exposition_describes_objects_nodes_and_pools_and_promtool_accepts_it() -> None:
    metrics = OperatorMetrics()
    node = Hypervisor.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Hypervisor", "metadata": {"name": "n1"},
        "spec": {"endpoint": "https://n:8443", "tokenSecretRef": {"namespace": "s", "name": "t"}},
        "status": {"capacity": {"cpu": 8, "memory": "16Gi"},
                   "allocatable": {"cpu": 16, "memory": "15Gi"},
                   "allocated": {"cpu": 2, "memory": "1Gi"},
                   "heartbeat": "2026-11-28T00:00:00Z"},
    })  # fmt: skip
    image = image_in("Failed", ready="False", reason="ChecksumMismatch", generation=2)
    metrics.state.objects = lambda: [node, image, network({"cidr": "10.0.0.0/24"})]
    metrics.state.placed = lambda name: (3, 2**30) if name == "n1" else None
    metrics.state.links["n1"] = AgentLink(connected=True, last_message=1.5)
    metrics.reconciled("Instance", "success", 0.02)
    metrics.scheduled({"InsufficientMemory": 2})
    text = metrics.render().decode()
    assert promtool_check_metrics(text) == ""
    found = samples(text)
    assert sample(found, "stratus_objects", kind="Image", phase="Failed") == 1
    assert sample(found, "stratus_object_ready", kind="Image", name="img",
                  reason="ChecksumMismatch", phase="Failed") == 0  # fmt: skip
    assert sample(found, "stratus_hypervisor_capacity_memory_bytes", hypervisor="n1") == 16 * 2**30
    assert sample(found, "stratus_hypervisor_allocated_vcpus", hypervisor="n1") == 3  # live
    assert sample(found, "stratus_network_allocated_addresses", network="net") == 3
    assert sample(found, "stratus_network_capacity_addresses", network="net") == 254
    assert sample(found, "stratus_operator_agent_stream_up", hypervisor="n1") == 1
    assert sample(found, "stratus_scheduler_rejections_total", reason="InsufficientMemory") == 2
    assert sample(found, "stratus_operator_reconciles_total", kind="Instance",
                  result="success") == 1  # fmt: skip


def test_a_scrape_collected_on_the_loop_and_written_in_a_thread_reads_as_one_render() -> None:
    metrics = OperatorMetrics()
    image = image_in("Ready", ready="True", reason="Ready", generation=1)
    objects = [image]
    metrics.state.objects = lambda: list(objects)
    metrics.reconciled("Image", "success", 0.02)
    collected = metrics.collected()
    before = metrics.render()
    # What changes after the collection (kopf's indexes between awaits) is not in it.
    objects.clear()
    metrics.reconciled("Image", "success", 0.02)
    with ThreadPoolExecutor(1) as pool:
        written = pool.submit(generate_latest, collected).result()
    assert written == before
    found = samples(written.decode())
    assert sample(found, "stratus_object_ready", kind="Image", name="img", phase="Ready") == 1
    assert sample(found, "stratus_operator_reconciles_total", kind="Image",
                  result="success") == 1  # fmt: skip
