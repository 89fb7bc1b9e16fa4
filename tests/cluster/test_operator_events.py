"""Events the operator records on objects, as `kubectl get events` shows them: the
transitions a user acts on, and the same one again counted, not repeated."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from testsupport import Cluster, apply, basics, instance, statuses, wait_until

if TYPE_CHECKING:
    from conftest import FakeAgent, ImageServer, Operator


def events_of(cluster: Cluster, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.kind={kind},involvedObject.name={name}"
    found = cluster.get_json("events", "-n", namespace, "--field-selector", selector)["items"]
    return sorted(found, key=lambda e: e["metadata"]["creationTimestamp"])


def reasons(events: list[dict[str, Any]]) -> dict[str, int]:
    return {e["reason"]: e["count"] for e in events}


def test_an_instance_tells_its_story_in_events(
    cluster: Cluster, namespace: str, fake_agent: FakeAgent, operator: Operator,
    image_server: ImageServer,
) -> None:  # fmt: skip
    apply(cluster, namespace, *basics(image_server.url()),
          instance("web", nodeSelector={"stratus.io/test": fake_agent.name}))  # fmt: skip
    cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "instance/web",
                    "--timeout=60s")  # fmt: skip
    found = wait_until("Started", lambda: (e := events_of(cluster, namespace, "Instance", "web"))
                       and "Started" in reasons(e) and e)  # fmt: skip
    by_reason = {e["reason"]: e for e in found}
    assert by_reason["Scheduled"]["message"] == f"Placed on Hypervisor {fake_agent.name}"
    assert by_reason["Started"]["type"] == "Normal"
    assert by_reason["Started"]["source"]["component"] == "stratus-operator"
    assert "ImageImported" in reasons(events_of(cluster, namespace, "Image", "img"))

    # Stopped and started again: one Stopped, and the Started counted twice, one object.
    for strategy, phase in (("Halted", "Stopped"), ("Always", "Running")):
        cluster.kubectl("-n", namespace, "patch", "instance", "web", "--type=merge", "-p",
                        json.dumps({"spec": {"runStrategy": strategy}}))  # fmt: skip
        wait_until(phase, lambda p=phase: statuses(cluster, namespace)["web"].get("phase") == p)

    def started_twice() -> dict[str, int] | None:
        found = reasons(events_of(cluster, namespace, "Instance", "web"))
        return found if found.get("Started") == 2 else None

    counted = wait_until("Started x2", started_twice)
    assert counted["Stopped"] == 1 and counted["Scheduled"] == 1
    assert len([e for e in events_of(cluster, namespace, "Instance", "web")
                if e["reason"] == "Started"]) == 1  # fmt: skip
    described = cluster.kubectl("-n", namespace, "describe", "instance", "web").stdout
    assert "Started" in described and "Placed on Hypervisor" in described


def test_a_failed_image_says_why_once(cluster: Cluster, namespace: str, operator: Operator) -> None:
    # Loopback, not the allowed image server: refused by the source policy for good.
    apply(cluster, namespace, {
        "apiVersion": "stratus.io/v1alpha1", "kind": "Image", "metadata": {"name": "bad"},
        "spec": {"source": {"http": {"url": "http://127.0.0.1:2379/v2/keys"}}}})  # fmt: skip
    failed = wait_until(
        "ImageFailed",
        lambda: [
            e for e in events_of(cluster, namespace, "Image", "bad") if e["reason"] == "ImageFailed"
        ],
    )
    assert failed[0]["type"] == "Warning" and len(failed) == 1
    assert failed[0]["message"].startswith("ImageSourceRefused: ")
    assert len(events_of(cluster, namespace, "Image", "bad")) == 1  # no second, generic one
