"""The operator's /metrics against the real API server: guarded as Kubernetes components
guard theirs (a reviewed token with get on /metrics), and telling what it did."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

from stratus_devcloud.controlplane import free_port
from testsupport import (
    Cluster,
    apply,
    basics,
    instance,
    promtool_check_metrics,
    sample,
    samples,
    scrape,
    wait_until,
)

if TYPE_CHECKING:
    from conftest import FakeAgent, ImageServer, MakeOperator


def test_metrics_are_for_readers_only_and_tell_what_the_operator_did(
    cluster: Cluster, namespace: str, fake_agent: FakeAgent, make_operator: MakeOperator,
    image_server: ImageServer,
) -> None:  # fmt: skip
    port = free_port()
    operator = make_operator("operator", "--metrics-port", str(port),
                             "--metrics-host", "127.0.0.1")  # fmt: skip
    operator.start()
    role = f"metrics-reader-{uuid.uuid4().hex[:6]}"
    for account in ("reader", "nobody"):
        cluster.kubectl("create", "serviceaccount", account, "-n", namespace)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": role},
        "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]}))  # fmt: skip
    cluster.kubectl("create", "clusterrolebinding", role, "--clusterrole", role,
                    "--serviceaccount", f"{namespace}:reader")  # fmt: skip
    try:
        apply(cluster, namespace, *basics(image_server.url()),
              instance("web", nodeSelector={"stratus.io/test": fake_agent.name}),
              instance("nowhere", nodeSelector={"stratus.io/test": "no-such-node"}))  # fmt: skip
        cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "instance/web",
                        "--timeout=60s")  # fmt: skip
        url = f"https://127.0.0.1:{port}/metrics"

        def token(account: str) -> str:
            return cluster.kubectl("create", "token", account, "-n", namespace).stdout.strip()

        assert scrape(url, None)[0] == 401
        assert scrape(url, "not-a-token")[0] == 401
        status, text = scrape(url, token("nobody"))
        assert status == 403 and "stratus" not in text
        reader = token("reader")

        def scraped() -> str | None:
            code, body = scrape(url, reader)
            assert code == 200, body
            found = samples(body)
            streaming = sample(found, "stratus_operator_agent_stream_up",
                               hypervisor=fake_agent.name)  # fmt: skip
            rejected = sample(found, "stratus_scheduler_rejections_total", reason="NodeSelector")
            return body if streaming == 1 and rejected else None

        text = wait_until("the metrics", scraped, timeout=30)
    finally:
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", role, check=False)

    assert promtool_check_metrics(text) == ""
    found = samples(text)
    assert sample(found, "stratus_operator_leader") == 1
    # What is there: the Instance, Running and Ready, and the other not.
    assert sample(found, "stratus_object_ready", kind="Instance", namespace=namespace,
                  name="web", phase="Running") == 1  # fmt: skip
    assert sample(found, "stratus_object_ready", kind="Instance", namespace=namespace,
                  name="nowhere", reason="Unschedulable") == 0  # fmt: skip
    assert (sample(found, "stratus_objects", kind="Instance", phase="Running") or 0) >= 1
    assert sample(found, "stratus_object_ready", kind="Image", namespace=namespace,
                  name="img") == 1  # fmt: skip
    # What it did: reconciles, the time to Ready, scheduling, the API requests it made.
    assert (sample(found, "stratus_operator_reconciles_total", kind="Instance",
                   result="success") or 0) >= 1  # fmt: skip
    assert (sample(found, "stratus_operator_time_to_ready_seconds_count", kind="Instance")
            or 0) >= 1  # fmt: skip
    assert (sample(found, "stratus_scheduler_decisions_total", result="scheduled") or 0) >= 1
    assert (sample(found, "stratus_scheduler_decisions_total", result="unschedulable")
            or 0) >= 1  # fmt: skip
    assert (sample(found, "stratus_operator_kube_requests_total", verb="patch",
                   resource="instances/status", code="200") or 0) >= 1  # fmt: skip
    assert (sample(found, "stratus_operator_kube_requests_total", verb="watch",
                   resource="instances", code="200") or 0) >= 1  # fmt: skip
    # The node and the Network's addresses.
    assert (sample(found, "stratus_hypervisor_capacity_vcpus", hypervisor=fake_agent.name)
            or 0) > 0  # fmt: skip
    assert (sample(found, "stratus_hypervisor_allocated_vcpus", hypervisor=fake_agent.name)
            or 0) >= 1  # fmt: skip
    assert sample(found, "stratus_network_capacity_addresses", namespace=namespace,
                  network="net") == 253  # fmt: skip
    last = sample(found, "stratus_operator_agent_last_message_timestamp_seconds",
                  hypervisor=fake_agent.name)  # fmt: skip
    assert last is not None and last > 0
    assert reader not in operator.log.read_text()
