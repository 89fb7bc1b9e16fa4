"""Volumes through the real API server and operator, with agents on the fake compute driver
(volume data in the fake volume driver): binding, attach, exclusivity, deletion."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from testsupport import Cluster, apply, basics, condition, instance, wait_until

if TYPE_CHECKING:
    from conftest import ImageServer, Operator, StartFakeAgent


def volume(name: str, size: str = "1Gi", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "Volume", "metadata": {"name": name},
            "spec": {"size": size, **spec}}  # fmt: skip


def status_of(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.get_json(kind, name, "-n", namespace).get("status", {})
    return found


def reason_of(cluster: Cluster, namespace: str, kind: str, name: str) -> str | None:
    ready = condition(status_of(cluster, namespace, kind, name), "Ready") or {}
    return ready.get("reason")


def test_local_volumes_bind_attach_once_and_outlive_their_instance(
    cluster: Cluster,
    namespace: str,
    start_fake_agent: StartFakeAgent,
    operator: Operator,
    image_server: ImageServer,
) -> None:
    a, b = start_fake_agent(volume_pool=3 * 2**30), start_fake_agent()
    on = {"nodeSelector": {"stratus.io/test": a.name}}
    apply(cluster, namespace, *basics(image_server.url()),
          volume("data"), volume("pinned", **on),
          volume("far", nodeSelector={"stratus.io/test": b.name}))  # fmt: skip

    # With a nodeSelector, made at once on that node; without, it waits for an Instance.
    cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "volume/pinned",
                    "--timeout=60s")  # fmt: skip
    pinned = status_of(cluster, namespace, "volume", "pinned")
    assert (pinned["phase"], pinned["node"], pinned["sizeBytes"]) == ("Available", a.name, 2**30)
    wait_until("data waits for a consumer", lambda: reason_of(
        cluster, namespace, "volume", "data") == "WaitingForFirstConsumer")  # fmt: skip
    assert status_of(cluster, namespace, "volume", "data")["phase"] == "Pending"

    # The first Instance binds it to its own node and gets it as a disk.
    apply(cluster, namespace, instance("web", volumes=[{"name": "data"}], **on))
    cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "instance/web",
                    "--timeout=60s")  # fmt: skip
    data = cluster.get_json("volume", "data", "-n", namespace)
    assert data["status"]["node"] == a.name
    wait_until("data InUse by web", lambda: status_of(cluster, namespace, "volume", "data").get(
        "attachedTo") == "web")  # fmt: skip
    assert status_of(cluster, namespace, "volume", "data")["phase"] == "InUse"
    held = {v["uid"]: v for v in a.request("GET", "/v1/volumes")["volumes"]}
    web_uid = cluster.get_json("instance", "web", "-n", namespace)["metadata"]["uid"]
    assert held[data["metadata"]["uid"]]["attachedTo"] == [web_uid]

    # A second Instance may not attach it; one needing Volumes on two nodes fits nowhere.
    apply(cluster, namespace, instance("other", volumes=[{"name": "data"}]),
          instance("split", volumes=[{"name": "pinned"}, {"name": "far"}]))  # fmt: skip
    wait_until("other refused", lambda: reason_of(
        cluster, namespace, "instance", "other") == "VolumeInUse")  # fmt: skip
    other = condition(status_of(cluster, namespace, "instance", "other"), "Ready") or {}
    assert "spec.volumes[0].name: Volume data is attached to Instance web" in other["message"]

    # Said on the Volume too, once, as a Warning Event.
    def told() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = cluster.get_json(
            "events", "-n", namespace, "--field-selector",
            "involvedObject.kind=Volume,involvedObject.name=data")["items"]  # fmt: skip
        return [e for e in found if e["reason"] == "VolumeInUse"]

    (event,) = wait_until("the Volume told", told)
    assert event["type"] == "Warning" and event["message"].startswith(
        "Instance other asks for it (spec.volumes[0].name), but it is attached to Instance web"
    )
    wait_until("split unschedulable", lambda: reason_of(
        cluster, namespace, "instance", "split") == "Unschedulable")  # fmt: skip
    split = condition(status_of(cluster, namespace, "instance", "split"), "Ready") or {}
    assert "different nodes" in split["message"]

    # Deleting a Volume in use waits, naming the Instance; the guest keeps its disk.
    cluster.kubectl("-n", namespace, "delete", "volume", "data", "--wait=false")
    wait_until("data held", lambda: status_of(cluster, namespace, "volume", "data").get(
        "phase") == "Deleting")  # fmt: skip
    held_by = condition(status_of(cluster, namespace, "volume", "data"), "Ready") or {}
    assert held_by["reason"] == "VolumeInUse" and "other, web" in held_by["message"]
    assert data["metadata"]["uid"] in {v["uid"] for v in a.request("GET", "/v1/volumes")["volumes"]}

    # Once no Instance names it, the deletion goes through and nothing is left on the node.
    cluster.kubectl("-n", namespace, "delete", "instance", "web", "other", "split",
                    "--timeout=60s")  # fmt: skip
    cluster.kubectl("-n", namespace, "wait", "--for=delete", "volume/data", "--timeout=60s")
    assert data["metadata"]["uid"] not in {
        v["uid"] for v in a.request("GET", "/v1/volumes")["volumes"]
    }
    # The other Volumes outlive the Instances that used them.
    assert status_of(cluster, namespace, "volume", "pinned")["phase"] == "Available"


def test_a_volume_the_node_cannot_hold_says_so_and_waits(
    cluster: Cluster,
    namespace: str,
    start_fake_agent: StartFakeAgent,
    operator: Operator,
) -> None:
    small = start_fake_agent(volume_pool=2 * 2**30)

    def pools() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = cluster.get_json("hypervisor", small.name).get(
            "status", {}).get("storage", [])  # fmt: skip
        return found

    wait_until("the pool reported", pools)
    assert pools() == [{"backend": "file", "capacity": "2Gi", "provisioned": "0", "free": "2Gi"}]
    apply(cluster, namespace, volume("huge", "3Gi", nodeSelector={"stratus.io/test": small.name}))
    wait_until("huge refused", lambda: reason_of(
        cluster, namespace, "volume", "huge") == "InsufficientStorage")  # fmt: skip
    huge = status_of(cluster, namespace, "volume", "huge")
    message = (condition(huge, "Ready") or {})["message"]
    assert (
        message
        == f"spec.size: 3Gi does not fit on node {small.name}: its file pool has 2Gi free of 2Gi"
    )
    assert huge["phase"] == "Pending" and (condition(huge, "Reconciling") or {})["status"] == "True"
    assert small.request("GET", "/v1/volumes")["volumes"] == []


def test_ceph_pools_and_volumes_say_what_they_miss(
    cluster: Cluster,
    namespace: str,
    start_fake_agent: StartFakeAgent,
    operator: Operator,
) -> None:
    start_fake_agent()
    pool_name = f"pool-{namespace}"
    pool = {"apiVersion": "stratus.io/v1alpha1", "kind": "CephPool",
            "metadata": {"name": pool_name},
            "spec": {"monitors": ["127.0.0.1:3300"], "pool": "rbd", "user": "stratus",
                     "keySecretRef": {"namespace": namespace, "name": "ceph-key"}}}  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pool))
    apply(cluster, namespace, volume("nowhere", backend="ceph", cephPool="missing"),
          volume("keyless", backend="ceph", cephPool=pool_name))  # fmt: skip
    try:
        # A CephPool whose Secret is missing is not Ready, naming the field and the Secret.
        wait_until("the pool waits for its key", lambda: (condition(cluster.get_json(
            "cephpool", pool_name).get("status", {}), "Ready") or {}).get(
            "reason") == "CephKeyNotFound")  # fmt: skip
        ready = condition(cluster.get_json("cephpool", pool_name)["status"], "Ready") or {}
        assert ready["message"] == f"spec.keySecretRef: Secret {namespace}/ceph-key not found"
        # A ceph Volume names the missing CephPool, or its pool's missing key.
        wait_until("nowhere waits", lambda: reason_of(
            cluster, namespace, "volume", "nowhere") == "CephPoolNotFound")  # fmt: skip
        nowhere = condition(status_of(cluster, namespace, "volume", "nowhere"), "Ready") or {}
        assert nowhere["message"] == "spec.cephPool: CephPool missing not found"
        wait_until("keyless waits", lambda: reason_of(
            cluster, namespace, "volume", "keyless") == "CephKeyNotFound")  # fmt: skip

        secret = "supersecretcephxkey=="
        cluster.kubectl("-n", namespace, "create", "secret", "generic", "ceph-key",
                        f"--from-literal=key={secret}")  # fmt: skip
        wait_until("the pool Ready", lambda: (condition(cluster.get_json(
            "cephpool", pool_name).get("status", {}), "Ready") or {}).get("status") == "True",
            90)  # fmt: skip
        # The key is never in any status or event.
        dumped = json.dumps([cluster.get_json("cephpool", pool_name),
                             cluster.get_json("volume", "keyless", "-n", namespace),
                             cluster.get_json("events", "-n", namespace)])  # fmt: skip
        assert secret not in dumped

        # Deleting the CephPool waits while a Volume is in it, naming it; then it goes (its
        # node was told to forget it).
        cluster.kubectl("delete", "cephpool", pool_name, "--wait=false")
        wait_until("the pool's deletion waits", lambda: (condition(cluster.get_json(
            "cephpool", pool_name).get("status", {}), "Ready") or {}).get(
            "reason") == "CephPoolInUse")  # fmt: skip
        waiting = condition(cluster.get_json("cephpool", pool_name)["status"], "Ready") or {}
        assert waiting["message"].startswith(f"deletion waits: Volume {namespace}/keyless is in")
        cluster.kubectl("-n", namespace, "delete", "volume", "keyless", "nowhere")
        cluster.kubectl("wait", "--for=delete", f"cephpool/{pool_name}", "--timeout=60s")
    finally:
        cluster.kubectl("delete", "cephpool", pool_name, "--wait=false", check=False)


def test_volumes_that_cannot_be_had_say_why_on_the_named_field(
    cluster: Cluster,
    namespace: str,
    start_fake_agent: StartFakeAgent,
    operator: Operator,
    image_server: ImageServer,
) -> None:
    node = start_fake_agent()
    selector = {"stratus.io/test": node.name}
    apply(cluster, namespace, *basics(image_server.url()),
          volume("thin", backend="lvm", nodeSelector=selector),
          instance("lonely", volumes=[{"name": "nothing"}], nodeSelector=selector))  # fmt: skip
    # No node there serves lvm volumes: one may yet (an agent configured with storage.lvm),
    # so it waits, naming the field.
    said = (f"spec.backend: no Ready Hypervisor with stratus.io/test={node.name} serves lvm "
            "volumes (its agent needs storage.lvm in its config)")  # fmt: skip
    wait_until("lvm waits for a node", lambda: (condition(status_of(
        cluster, namespace, "volume", "thin"), "Ready") or {}).get("message") == said)  # fmt: skip
    thin = status_of(cluster, namespace, "volume", "thin")
    assert reason_of(cluster, namespace, "volume", "thin") == "NoMatchingNode"
    assert (condition(thin, "Reconciling") or {})["status"] == "True"
    # A Volume that does not exist (yet): the Instance waits, naming the field.
    wait_until("lonely waits", lambda: reason_of(
        cluster, namespace, "instance", "lonely") == "VolumeNotFound")  # fmt: skip
    lonely = status_of(cluster, namespace, "instance", "lonely")
    assert (condition(lonely, "Ready") or {})["message"] == (
        "spec.volumes[0].name: Volume nothing not found"
    )
    assert (condition(lonely, "Reconciling") or {})["status"] == "True"
    assert node.guest_uids() == set()


def test_an_instance_with_an_lvm_volume_runs_on_a_node_serving_lvm(
    cluster: Cluster,
    namespace: str,
    start_fake_agent: StartFakeAgent,
    operator: Operator,
    image_server: ImageServer,
) -> None:
    files_only = start_fake_agent(volume_pool=2**40)
    with_lvm = start_fake_agent(volume_pool=2**30, backends=("file", "lvm"))
    apply(cluster, namespace, *basics(image_server.url()), volume("fast", backend="lvm"),
          instance("db", volumes=[{"name": "fast"}]))  # fmt: skip
    # Placed where the lvm pool is, although the other node has more of everything.
    wait_until("db Running", lambda: (status_of(cluster, namespace, "instance", "db")
                                      .get("phase") == "Running"))  # fmt: skip
    assert status_of(cluster, namespace, "instance", "db")["node"] == with_lvm.name
    fast = status_of(cluster, namespace, "volume", "fast")
    assert (fast["phase"], fast["node"], fast["attachedTo"]) == ("InUse", with_lvm.name, "db")
    # Each node's own pools, by backend, on its Hypervisor.
    pools = {
        agent.name: {p["backend"]: p["capacity"] for p in cluster.get_json(
            "hypervisor", agent.name).get("status", {}).get("storage", [])}
        for agent in (files_only, with_lvm)
    }  # fmt: skip
    assert pools == {files_only.name: {"file": "1Ti"}, with_lvm.name: {"file": "1Gi", "lvm": "1Gi"}}


def test_a_volume_moves_between_running_instances(
    cluster: Cluster,
    namespace: str,
    start_fake_agent: StartFakeAgent,
    operator: Operator,
    image_server: ImageServer,
) -> None:
    a, b = start_fake_agent(), start_fake_agent()
    on_a = {"nodeSelector": {"stratus.io/test": a.name}}
    apply(cluster, namespace, *basics(image_server.url()), volume("data", **on_a),
          volume("far", nodeSelector={"stratus.io/test": b.name}),
          instance("first", **on_a), instance("second", **on_a))  # fmt: skip
    for name in ("first", "second"):
        cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", f"instance/{name}",
                        "--timeout=60s")  # fmt: skip
    uid = {name: cluster.get_json(kind, name, "-n", namespace)["metadata"]["uid"]
           for kind, name in (("instance", "first"), ("instance", "second"),
                              ("volume", "data"))}  # fmt: skip

    def users_on_a() -> list[str]:
        held = {v["uid"]: v for v in a.request("GET", "/v1/volumes")["volumes"]}
        found: list[str] = held[uid["data"]]["attachedTo"]
        return found

    def patch(name: str, *volumes: str) -> None:
        body = json.dumps({"spec": {"volumes": [{"name": v} for v in volumes]}})
        cluster.kubectl("-n", namespace, "patch", "instance", name, "--type=merge", "-p", body)

    # Added to a running Instance: attached on its node, InUse by it.
    patch("first", "data")
    wait_until("data on first", lambda: users_on_a() == [uid["first"]])
    wait_until("data InUse by first", lambda: status_of(cluster, namespace, "volume", "data").get(
        "attachedTo") == "first")  # fmt: skip
    # Dropped from it and named by another at once: it moves once the node let go.
    patch("first")
    patch("second", "data")
    wait_until("data on second", lambda: users_on_a() == [uid["second"]])
    wait_until("data InUse by second", lambda: status_of(
        cluster, namespace, "volume", "data").get("attachedTo") == "second")  # fmt: skip
    cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "instance/second",
                    "--timeout=60s")  # fmt: skip
    assert status_of(cluster, namespace, "volume", "data")["phase"] == "InUse"

    # A running Instance cannot take a local Volume bound to another node: it says so and
    # keeps running where it is.
    patch("first", "far")
    wait_until("first refused far", lambda: reason_of(
        cluster, namespace, "instance", "first") == "VolumesOnDifferentNodes")  # fmt: skip
    first = status_of(cluster, namespace, "instance", "first")
    assert (condition(first, "Ready") or {})["message"] == (
        f"spec.volumes: the Instance runs on {a.name}, its local Volumes are on {b.name}"
    )
    assert (condition(first, "Stalled") or {})["status"] == "True"
    assert (first["phase"], first["node"]) == ("Running", a.name)


def snapshot(name: str, of: str) -> dict[str, Any]:
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "VolumeSnapshot",
            "metadata": {"name": name}, "spec": {"volume": of}}  # fmt: skip


def test_snapshots_restore_into_new_volumes_and_hold_their_volume(
    cluster: Cluster,
    namespace: str,
    start_fake_agent: StartFakeAgent,
    operator: Operator,
    image_server: ImageServer,
) -> None:
    node = start_fake_agent()
    on = {"nodeSelector": {"stratus.io/test": node.name}}
    apply(cluster, namespace, *basics(image_server.url()), volume("data", **on),
          snapshot("nightly", of="data"), snapshot("orphan", of="nothing"))  # fmt: skip
    cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "volumesnapshot/nightly",
                    "--timeout=60s")  # fmt: skip
    nightly = cluster.get_json("volumesnapshot", "nightly", "-n", namespace)
    assert (nightly["status"]["phase"], nightly["status"]["node"]) == ("Ready", node.name)
    assert nightly["status"]["sizeBytes"] == 2**30
    data_uid = cluster.get_json("volume", "data", "-n", namespace)["metadata"]["uid"]
    held = {s["uid"]: s for s in node.request("GET", "/v1/volumes")["snapshots"]}
    assert held[nightly["metadata"]["uid"]]["volume"] == data_uid
    # A snapshot of a Volume that is not there waits, naming the field.
    wait_until("orphan waits", lambda: reason_of(
        cluster, namespace, "volumesnapshot", "orphan") == "SourceNotFound")  # fmt: skip
    orphan = condition(status_of(cluster, namespace, "volumesnapshot", "orphan"), "Ready") or {}
    assert orphan["message"] == "spec.volume: Volume nothing not found"

    # Restored into a new Volume, made at once where the snapshot is.
    apply(cluster, namespace, volume("restored", source={"snapshot": "nightly"}))
    cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "volume/restored",
                    "--timeout=60s")  # fmt: skip
    assert status_of(cluster, namespace, "volume", "restored")["node"] == node.name

    # A Volume with snapshots is not deleted until they are gone.
    cluster.kubectl("-n", namespace, "delete", "volume", "data", "--wait=false")
    wait_until("data held by its snapshot", lambda: reason_of(
        cluster, namespace, "volume", "data") == "VolumeHasSnapshots")  # fmt: skip
    held_by = condition(status_of(cluster, namespace, "volume", "data"), "Ready") or {}
    assert "VolumeSnapshot nightly was taken of the volume" in held_by["message"]
    assert status_of(cluster, namespace, "volume", "data")["phase"] == "Deleting"
    cluster.kubectl("-n", namespace, "delete", "volumesnapshot", "nightly", "orphan",
                    "--timeout=60s")  # fmt: skip
    cluster.kubectl("-n", namespace, "wait", "--for=delete", "volume/data", "--timeout=60s")
    inventory = node.request("GET", "/v1/volumes")
    assert inventory["snapshots"] == []
    assert {v["uid"] for v in inventory["volumes"]} == {
        cluster.get_json("volume", "restored", "-n", namespace)["metadata"]["uid"]
    }

    # A file Volume in use is not snapshotted: the snapshot waits, naming the Instance.
    apply(cluster, namespace, instance("db", volumes=[{"name": "restored"}], **on))
    wait_until("restored InUse", lambda: status_of(cluster, namespace, "volume", "restored").get(
        "attachedTo") == "db")  # fmt: skip
    apply(cluster, namespace, snapshot("busy", of="restored"))
    wait_until("busy waits", lambda: reason_of(
        cluster, namespace, "volumesnapshot", "busy") == "VolumeInUse")  # fmt: skip
    busy = status_of(cluster, namespace, "volumesnapshot", "busy")
    assert "attached to Instance db" in (condition(busy, "Ready") or {})["message"]
    assert (condition(busy, "Reconciling") or {})["status"] == "True"
