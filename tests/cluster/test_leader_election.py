"""Two operator replicas with leader election against the real API server: one reconciles,
the other waits, and takes over within 15 s of the leader's death."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testsupport import Cluster, apply, basics, instance, statuses, wait_until

if TYPE_CHECKING:
    from conftest import FakeAgent, ImageServer, MakeOperator


def holder(cluster: Cluster, namespace: str) -> str | None:
    """The replica (its POD_NAME) holding the Lease: holders are POD_NAME_<random>."""
    found = cluster.kubectl("-n", namespace, "get", "lease", "stratus-operator",
                            "-o", "jsonpath={.spec.holderIdentity}", check=False)  # fmt: skip
    return found.stdout.rpartition("_")[0] if found.returncode == 0 else None


def running(cluster: Cluster, namespace: str, name: str) -> bool:
    return statuses(cluster, namespace).get(name, {}).get("phase") == "Running"


def test_a_standby_takes_over_within_15_s_of_the_leaders_death(
    cluster: Cluster,
    namespace: str,
    fake_agent: FakeAgent,
    image_server: ImageServer,
    make_operator: MakeOperator,
    tmp_path: Path,
) -> None:
    def replica(name: str) -> Any:
        return make_operator(name, "--leader-elect", "--leader-election-namespace", namespace,
                             env={"POD_NAME": name})  # fmt: skip

    first, second = replica("replica-a"), replica("replica-b")
    first.start()
    wait_until("replica-a leads", lambda: holder(cluster, namespace) == "replica-a")
    second.start()
    on_node = {"nodeSelector": {"stratus.io/test": fake_agent.name}}
    apply(cluster, namespace, *basics(image_server.url()), instance("before", **on_node))
    wait_until("the leader runs an Instance", lambda: running(cluster, namespace, "before"))
    wait_until("replica-b waits", lambda: "waits for Lease"
               in (tmp_path / "replica-b.log").read_text())  # fmt: skip
    assert holder(cluster, namespace) == "replica-a"
    assert "leads" not in (tmp_path / "replica-b.log").read_text()

    first.kill()  # SIGKILL: no chance to give the Lease up
    died = time.monotonic()
    wait_until("replica-b leads", lambda: holder(cluster, namespace) == "replica-b",
               timeout=30)  # fmt: skip
    took = time.monotonic() - died
    print(f"standby took over {took:.1f} s after the leader's death")
    assert took < 15, took
    apply(cluster, namespace, instance("after", **on_node))
    wait_until("the new leader runs an Instance",
               lambda: running(cluster, namespace, "after"))  # fmt: skip

    # A leader that stops cleanly gives the Lease up at once.
    second.stop()
    assert second.process is not None and second.process.returncode == 0
    released = cluster.kubectl("-n", namespace, "get", "lease", "stratus-operator",
                               "-o", "jsonpath={.spec.holderIdentity}")  # fmt: skip
    assert released.stdout == ""
