"""The operator against the real API server, with agents on the fake compute driver."""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

from testsupport import (
    Cluster,
    apply,
    basics,
    condition,
    instance,
    ready_reason,
    statuses,
    wait_until,
)

if TYPE_CHECKING:
    from conftest import FakeAgent, ImageServer, Operator


def test_instance_runs_and_is_deleted_from_its_node(
    cluster: Cluster,
    namespace: str,
    fake_agent: FakeAgent,
    operator: Operator,
    image_server: ImageServer,
) -> None:
    apply(
        cluster,
        namespace,
        *basics(image_server.url()),
        instance("web", nodeSelector={"stratus.io/test": fake_agent.name}),
    )
    cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "instance/web",
                    "--timeout=60s")  # fmt: skip
    web = cluster.get_json("instance", "web", "-n", namespace)
    status = web["status"]
    assert status["phase"] == "Running" and status["node"] == fake_agent.name
    assert status["interfaces"][0]["ip"] == "10.30.0.2"
    assert status["observedGeneration"] == web["metadata"]["generation"]
    assert "stratus.io/finalizer" in web["metadata"]["finalizers"]
    assert fake_agent.guest_uids() == {web["metadata"]["uid"]}

    # A status edited by hand is put back within a health interval (the node's report).
    cluster.kubectl("-n", namespace, "patch", "instance", "web", "--subresource=status",
                    "--type=merge", "-p", '{"status": {"phase": "Failed"}}')  # fmt: skip
    wait_until("the status put back", lambda: statuses(cluster, namespace)["web"] == status,
               timeout=30)  # fmt: skip

    cluster.kubectl("-n", namespace, "patch", "instance", "web", "--type=merge",
                    "-p", '{"spec": {"runStrategy": "Halted"}}')  # fmt: skip
    wait_until("Stopped", lambda: statuses(cluster, namespace)["web"].get("phase") == "Stopped")

    # An agent that stops answering turns its Instances Unknown within a health interval.
    cluster.kubectl("-n", namespace, "patch", "instance", "web", "--type=merge",
                    "-p", '{"spec": {"runStrategy": "Always"}}')  # fmt: skip
    cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "instance/web",
                    "--timeout=60s")  # fmt: skip
    fake_agent.stop()

    def unknown() -> dict[str, Any] | None:
        found = condition(statuses(cluster, namespace)["web"], "Ready") or {}
        return found if found.get("status") == "Unknown" else None

    found = wait_until("Ready Unknown", unknown, timeout=30)
    assert found["reason"] == "NodeUnreachable" and fake_agent.name in found["message"]
    fake_agent.start()  # the fake driver forgot the guest: the resync dispatches it again
    cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "instance/web",
                    "--timeout=60s")  # fmt: skip

    cluster.kubectl("-n", namespace, "delete", "instance", "web", "--timeout=60s")
    assert fake_agent.guest_uids() == set()


def test_problems_are_reported_on_the_named_field(
    cluster: Cluster,
    namespace: str,
    fake_agent: FakeAgent,
    operator: Operator,
    image_server: ImageServer,
) -> None:
    selector = {"stratus.io/test": fake_agent.name}
    apply(
        cluster, namespace, *basics(image_server.url()),
        instance(
            "no-type", cpu=None, memory=None, instanceType="missing-type", nodeSelector=selector
        ),
        instance("taken-ip", networks=[{"name": "net", "ip": "10.30.0.1"}], nodeSelector=selector),
        instance("no-net", networks=[{"name": "nowhere"}], nodeSelector=selector),
        instance("nowhere", nodeSelector={"stratus.io/test": "no-such-node"}),
    )  # fmt: skip

    wanted = {"no-type": "InstanceTypeNotFound", "taken-ip": "AddressUnavailable",
              "no-net": "NetworkNotFound"}  # fmt: skip

    def reported() -> dict[str, dict[str, Any]] | None:
        # Each may first say something else (ImageNotReady until the Image is checked).
        found = statuses(cluster, namespace)
        if len(found) < 4 or any(ready_reason(found[n]) != r for n, r in wanted.items()):
            return None
        nowhere = found["nowhere"].get("conditions", [])
        return found if any(c["type"] == "Scheduled" for c in nowhere) else None

    found = wait_until("conditions on every Instance", reported)
    assert ready_reason(found["no-type"]) == "InstanceTypeNotFound"
    taken = next(c for c in found["taken-ip"]["conditions"] if c["type"] == "Ready")
    assert taken["reason"] == "AddressUnavailable"
    assert taken["message"].startswith("spec.networks[0].ip: 10.30.0.1 is the gateway")
    assert found["taken-ip"]["phase"] == "Failed"
    assert ready_reason(found["no-net"]) == "NetworkNotFound"
    # kstatus: waiting on something that may yet appear is InProgress, not Failed.
    waiting = {c["type"]: c["status"] for c in found["no-net"]["conditions"]}
    assert (waiting["Reconciling"], waiting["Stalled"]) == ("True", "False")
    scheduled = next(c for c in found["nowhere"]["conditions"] if c["type"] == "Scheduled")
    assert scheduled["reason"] == "Unschedulable" and "nodeSelector" in scheduled["message"]

    # The missing InstanceType appears: the Instance goes ahead on its own.
    name = "missing-type"
    itype = {"apiVersion": "stratus.io/v1alpha1", "kind": "InstanceType",
             "metadata": {"name": name}, "spec": {"cpu": 1, "memory": "128Mi"}}  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=json.dumps(itype))
    try:
        cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "instance/no-type",
                        "--timeout=60s")  # fmt: skip
    finally:
        cluster.kubectl("delete", "instancetype", name, check=False)


def test_many_instances_restarts_and_resync(
    cluster: Cluster,
    namespace: str,
    fake_agent: FakeAgent,
    operator: Operator,
    image_server: ImageServer,
) -> None:
    count = int(os.environ.get("STRATUS_TEST_INSTANCES", "100"))
    selector = {"stratus.io/test": fake_agent.name}
    apply(cluster, namespace, *basics(image_server.url()),
          *(instance(f"vm-{i:03d}", nodeSelector=selector) for i in range(count)))  # fmt: skip

    # Kill the operator while it is provisioning, start it again: no guest twice.
    wait_until("some Instances dispatched", lambda: len(fake_agent.guest_uids()) >= 5)
    operator.kill()
    operator.start()

    def all_running() -> bool:
        found = statuses(cluster, namespace)
        return len(found) == count and all(s.get("phase") == "Running" for s in found.values())

    wait_until(f"{count} Instances Running", all_running, timeout=300)
    items = cluster.get_json("instances", "-n", namespace)["items"]
    uids = {i["metadata"]["uid"] for i in items}
    assert fake_agent.guest_uids() == uids
    ips = [i["status"]["interfaces"][0]["ip"] for i in items]
    macs = [i["status"]["interfaces"][0]["mac"] for i in items]
    assert len(set(ips)) == len(set(macs)) == count  # no address handed out twice

    # A guest that belongs to no Instance is removed; guests lost by the node come back.
    orphan = str(uuid.uuid4())
    spec = {"uid": orphan, "name": "orphan", "namespace": namespace, "generation": 1, "cpu": 1,
            "memoryBytes": 2**27, "disks": [{"name": "root"}],
            "cloudInit": {"instanceId": orphan, "hostname": "orphan"}}  # fmt: skip
    fake_agent.request("PUT", f"/v1/guests/{orphan}", spec)
    fake_agent.stop()  # the fake driver forgets every guest
    fake_agent.start()
    fake_agent.request("PUT", f"/v1/guests/{orphan}", spec)
    wait_until("the node resynced", lambda: fake_agent.guest_uids() == uids, timeout=120)


def test_a_waiting_instance_moves_on_when_its_dependencies_appear(
    cluster: Cluster,
    namespace: str,
    fake_agent: FakeAgent,
    operator: Operator,
    image_server: ImageServer,
) -> None:
    """Applied before its Image and Network, the Instance waits and says on what; each
    dependency's events let it go on at once. It first waits 31 s, after which kopf's
    backoff (2 s doubling) would next look at it only at 62 s, and the safety retry at
    60 s: moving on within 10 s of each dependency is the wake-up's doing."""
    image, network = basics(image_server.url())[1], basics(image_server.url())[0]
    apply(cluster, namespace, instance("late", nodeSelector={"stratus.io/test": fake_agent.name}))
    found = wait_until("ImageNotFound", lambda: ready_reason(statuses(cluster, namespace)["late"])
                       == "ImageNotFound" and statuses(cluster, namespace)["late"])  # fmt: skip
    ready = condition(found, "Ready") or {}
    assert ready["message"] == "spec.boot.image: Image img not found"
    assert (condition(found, "Reconciling") or {}).get("status") == "True"
    assert (condition(found, "Stalled") or {}).get("status") == "False"
    time.sleep(31)  # the old backoff: retries at 2, 6, 14, 30 s, then 62 s

    started = time.monotonic()
    apply(cluster, namespace, image)

    def waits_for_network() -> dict[str, Any] | None:
        status = statuses(cluster, namespace)["late"]
        return status if ready_reason(status) == "NetworkNotFound" else None

    found = wait_until("NetworkNotFound after the Image", waits_for_network, timeout=10)
    assert (condition(found, "Ready") or {})["message"] == (
        "spec.networks[0].name: Network net not found"
    )
    image_woke = time.monotonic() - started

    started = time.monotonic()
    apply(cluster, namespace, network)

    def scheduled() -> dict[str, Any] | None:
        status = statuses(cluster, namespace)["late"]
        return status if (condition(status, "Scheduled") or {}).get("status") == "True" else None

    wait_until("Scheduled after the Network", scheduled, timeout=10)
    network_woke = time.monotonic() - started
    print(f"woken {image_woke:.1f} s after the Image, {network_woke:.1f} s after the Network")
    cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "instance/late",
                    "--timeout=60s")  # fmt: skip
    log = operator.log.read_text()
    assert "Traceback" not in log, log[-3000:]
