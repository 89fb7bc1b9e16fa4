"""A file Volume in real guests on the all-in-one, changed while they run: plugged into one
guest, which writes to it; grown there; pulled out and plugged into a second guest, which
reads the same bytes, also after a stop and start. Deleting the Volume waits while a guest
uses it, and then leaves no file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from allinone_kit import BOOT_TIMEOUT, Cloud, boot_marker, small_instance
from stratus_api import naming
from stratus_api.quantity import ByteQuantity
from stratus_api.volume_wire import disk_serial
from testsupport import REPO_ROOT, disk_watcher, wait_until


def volume_status(cloud: Cloud) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(cloud.kubectl("get", "volume", "notes", "-o", "json")).get(
        "status", {}
    )
    return status


def set_volumes(cloud: Cloud, instance: str, *names: str) -> None:
    volumes = [{"name": name} for name in names]
    patch = json.dumps({"spec": {"volumes": volumes}})
    cloud.kubectl("patch", "instance", instance, "--type=merge", "-p", patch)


def since_last_boot(cloud: Cloud, name: str) -> str:
    console = cloud.console(name)
    return console[console.rfind("STRATUS-GUEST: booted") :]


def test_a_volume_moves_between_running_guests_and_grows_online(cloud: Cloud) -> None:
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples"))  # the image, type and network
    volume = {"apiVersion": "stratus.io/v1alpha1", "kind": "Volume",
              "metadata": {"name": "notes"}, "spec": {"size": "64Mi"}}  # fmt: skip
    cloud.kubectl("apply", "-f", "-", input=json.dumps(volume))
    uid = json.loads(cloud.kubectl("get", "volume", "notes", "-o", "json"))["metadata"]["uid"]
    serial = disk_serial(uid)
    # Both guests boot at once, without the volume; each watches its disks.
    writer = small_instance("writer", userData=disk_watcher(mark="42"))
    reader = small_instance("reader", userData=disk_watcher())
    cloud.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                        "items": [writer, reader]}))  # fmt: skip
    for name in ("writer", "reader"):
        boot_marker(cloud, name, "STRATUS-GUEST: user-data exit=0")
    wait_until("notes waits for its first consumer",
               lambda: volume_status(cloud).get("phase") == "Pending")  # fmt: skip

    # Plugged into the running writer, which finds it by serial and writes a mark.
    set_volumes(cloud, "writer", "notes")
    console = boot_marker(cloud, "writer", f"VOL-WROTE {serial}")
    seen = f"VOL-SEEN {serial} dev=vdb sectors={64 * 2**11} data="
    assert [line for line in console.splitlines() if line.rstrip().endswith(seen)], console[-2000:]
    wait_until("notes InUse by writer", lambda: (s := volume_status(cloud)).get("phase")
               == "InUse" and s.get("attachedTo") == "writer")  # fmt: skip

    # Grown while in use: the guest sees the new size without a reboot.
    cloud.kubectl("patch", "volume", "notes", "--type=merge", "-p", '{"spec":{"size":"96Mi"}}')
    boot_marker(cloud, "writer", f"VOL-SEEN {serial} dev=vdb sectors={96 * 2**11} ")
    wait_until("status.sizeBytes grown", lambda: volume_status(cloud).get("sizeBytes")
               == 96 * 2**20)  # fmt: skip
    assert cloud.instance("writer")["status"].get("restarts", 0) == 0

    # Pulled out of the writer: free again once the guest has let go of it.
    set_volumes(cloud, "writer")
    boot_marker(cloud, "writer", f"VOL-GONE {serial}")
    wait_until("notes Available", lambda: (s := volume_status(cloud)).get("phase")
               == "Available" and not s.get("attachedTo"))  # fmt: skip

    # Plugged into the reader, which reads the writer's mark, also after a stop and start.
    set_volumes(cloud, "reader", "notes")
    read = f"VOL-SEEN {serial} dev=vdb sectors={96 * 2**11} data=STRATUS-MARK-42"
    boot_marker(cloud, "reader", read)
    for strategy, phase in (("Halted", "Stopped"), ("Always", "Running")):
        patch = json.dumps({"spec": {"runStrategy": strategy}})
        cloud.kubectl("patch", "instance", "reader", "--type=merge", "-p", patch)
        cloud.kubectl("wait", "instance/reader", f"--for=jsonpath={{.status.phase}}={phase}",
                      f"--timeout={BOOT_TIMEOUT:.0f}s")  # fmt: skip
    wait_until("the mark read again after a fresh boot",
               lambda: read in since_last_boot(cloud, "reader"), BOOT_TIMEOUT)  # fmt: skip

    # Deleting it waits while the reader uses it, and says so; then nothing is left.
    cloud.kubectl("delete", "volume", "notes", "--wait=false")
    wait_until("the delete waits, naming reader", lambda: (s := volume_status(cloud)).get(
        "phase") == "Deleting" and any("reader" in c.get("message", "")
                                       for c in s.get("conditions", [])))  # fmt: skip
    set_volumes(cloud, "reader")
    cloud.kubectl("wait", "volume/notes", "--for=delete", "--timeout=120s")
    volumes = cloud.dev.node_dir / "agent" / "volumes"
    assert not list(volumes.glob(f"*{uid}*"))
    cloud.kubectl("delete", "instance", "writer", "reader", f"--timeout={BOOT_TIMEOUT:.0f}s")


def test_an_instance_boots_from_a_volume_made_from_the_image(cloud: Cloud) -> None:
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples"))
    volume = {"apiVersion": "stratus.io/v1alpha1", "kind": "Volume",
              "metadata": {"name": "bootdisk"},
              "spec": {"size": "256Mi", "source": {"image": "stratus-test"}}}  # fmt: skip
    booted = small_instance("from-volume", boot={"volume": "bootdisk"})
    cloud.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                        "items": [volume, booted]}))  # fmt: skip
    boot_marker(cloud, "from-volume", "STRATUS-GUEST: ready")
    disk = json.loads(cloud.kubectl("get", "volume", "bootdisk", "-o", "json"))
    assert (disk["status"]["phase"], disk["status"]["attachedTo"]) == ("InUse", "from-volume")

    # The Volume outlives the Instance that booted from it.
    cloud.kubectl("delete", "instance", "from-volume", f"--timeout={BOOT_TIMEOUT:.0f}s")
    wait_until("bootdisk Available", lambda: json.loads(cloud.kubectl(
        "get", "volume", "bootdisk", "-o", "json"))["status"]["phase"] == "Available")  # fmt: skip
    location = Path(disk["status"]["location"])
    assert location.parent == cloud.dev.node_dir / "agent" / "volumes" and location.exists()
    cloud.kubectl("delete", "volume", "bootdisk", "--timeout=60s")
    assert not location.exists()


def rbd(cloud: Cloud, *args: str) -> str:
    """The rbd CLI on the all-in-one's Ceph, as its admin (conf and keyring files only)."""
    cluster = cloud.dev.ceph.cluster()
    return subprocess.run(
        ["rbd", "--conf", str(cluster.conf_path), "--keyring", str(cluster.admin_keyring_path),
         "--id", "admin", *args],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_an_instance_boots_from_an_rbd_clone_of_the_image(cloud: Cloud) -> None:
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples"))
    spec = {"size": "1Gi", "backend": "ceph", "source": {"image": "stratus-test"}}
    volume = {"apiVersion": "stratus.io/v1alpha1", "kind": "Volume",
              "metadata": {"name": "rbd-boot"}, "spec": spec}  # fmt: skip
    booted = small_instance("from-rbd", boot={"volume": "rbd-boot"})
    cloud.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                        "items": [volume, booted]}))  # fmt: skip
    boot_marker(cloud, "from-rbd", "STRATUS-GUEST: ready")
    disk = json.loads(cloud.kubectl("get", "volume", "rbd-boot", "-o", "json"))
    uid = disk["metadata"]["uid"]
    assert (disk["status"]["phase"], disk["status"]["attachedTo"]) == ("InUse", "from-rbd")
    # A copy-on-write clone of the Image, imported once into the pool.
    info = json.loads(rbd(cloud, "info", "--format", "json", f"stratus/volume-{uid}"))
    image_uid = json.loads(cloud.kubectl("get", "image", "stratus-test", "-o", "json"))[
        "metadata"]["uid"]  # fmt: skip
    assert info["parent"]["image"] == f"image-{image_uid}", info
    assert info["size"] == 2**30

    # The pool's figures are on its CephPool (a node's health check reads them), not on
    # the Hypervisor, whose storage is the node's own.
    def provisioned() -> int:
        pool = json.loads(cloud.kubectl("get", "cephpool", "default", "-o", "json"))
        return ByteQuantity(pool.get("status", {}).get("provisioned") or "0").bytes

    wait_until("the CephPool counts rbd-boot", lambda: provisioned() >= 2**30, timeout=60)
    for hypervisor in json.loads(cloud.kubectl("get", "hypervisors", "-o", "json"))["items"]:
        backends = [p["backend"] for p in hypervisor["status"].get("storage", [])]
        assert backends == ["file"], hypervisor["status"]

    cloud.kubectl("delete", "instance", "from-rbd", f"--timeout={BOOT_TIMEOUT:.0f}s")
    wait_until("rbd-boot Available", lambda: json.loads(cloud.kubectl(
        "get", "volume", "rbd-boot", "-o", "json"))["status"]["phase"] == "Available")  # fmt: skip
    assert f"volume-{uid}" in rbd(cloud, "ls", "stratus").split()
    # A snapshot of it, taken in the pool; once it is deleted, so can the Volume be.
    snapshot = {"apiVersion": "stratus.io/v1alpha1", "kind": "VolumeSnapshot",
                "metadata": {"name": "rbd-boot-1"}, "spec": {"volume": "rbd-boot"}}  # fmt: skip
    cloud.kubectl("apply", "-f", "-", input=json.dumps(snapshot))
    cloud.kubectl("wait", "--for=condition=Ready", "volumesnapshot/rbd-boot-1", "--timeout=60s")
    assert rbd(cloud, "snap", "ls", f"stratus/volume-{uid}").strip()
    cloud.kubectl("delete", "volumesnapshot", "rbd-boot-1", "--timeout=60s")
    cloud.kubectl("delete", "volume", "rbd-boot", "--timeout=60s")
    assert f"volume-{uid}" not in rbd(cloud, "ls", "stratus").split()


def test_a_shareable_ceph_volume_serves_two_running_guests_at_once(cloud: Cloud) -> None:
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples"))
    volume = {"apiVersion": "stratus.io/v1alpha1", "kind": "Volume", "metadata": {"name": "team"},
              "spec": {"size": "64Mi", "backend": "ceph", "shareable": True}}  # fmt: skip
    team = [{"name": "team"}]
    writer = small_instance("sharer-w", userData=disk_watcher(mark="77"), volumes=team)
    cloud.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                        "items": [volume, writer]}))  # fmt: skip
    uid = json.loads(cloud.kubectl("get", "volume", "team", "-o", "json"))["metadata"]["uid"]
    serial = disk_serial(uid)
    boot_marker(cloud, "sharer-w", f"VOL-WROTE {serial}")

    # A second guest gets the same disk while the first runs, and reads what it wrote.
    reader = small_instance("sharer-r", userData=disk_watcher(), volumes=team)
    cloud.kubectl("apply", "-f", "-", input=json.dumps(reader))
    boot_marker(cloud, "sharer-r", f"VOL-SEEN {serial} dev=vdb sectors={64 * 2**11} "
                                   "data=STRATUS-MARK-77")  # fmt: skip

    def attached_to() -> str:
        status = json.loads(cloud.kubectl("get", "volume", "team", "-o", "json"))["status"]
        return str(status.get("attachedTo") or "")

    wait_until("team attached to both", lambda: attached_to() == "sharer-r,sharer-w")
    for name in ("sharer-r", "sharer-w"):
        assert cloud.instance(name)["status"]["phase"] == "Running"
        domain = subprocess.run(
            ["virsh", "-c", "qemu:///system", "dumpxml",
             naming.domain_name(cloud.instance(name)["metadata"]["uid"])],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "<shareable/>" in domain and "cache='none'" in domain, domain

    cloud.kubectl("delete", "instance", "sharer-r", f"--timeout={BOOT_TIMEOUT:.0f}s")
    wait_until("team attached to the writer only", lambda: attached_to() == "sharer-w")
    cloud.kubectl("delete", "instance", "sharer-w", f"--timeout={BOOT_TIMEOUT:.0f}s")
    cloud.kubectl("delete", "volume", "team", "--timeout=60s")
    assert f"volume-{uid}" not in rbd(cloud, "ls", "stratus").split()
