"""The adversarial run's findings, replayed on the all-in-one: real guests, real node files.

- a guest's seed and disk belong to that guest's own QEMU user (another guest cannot open
  them) and binary user-data from a Secret reaches the seed byte for byte;
- an edit the models refuse is refused by the API server, naming the field, and the guest
  lives on;
- a guest destroyed from outside is started again (runStrategy Always) and counted;
- an Image pointing inside the node is refused, and no guest is dispatched on it;
- a bridge that disappears is rebuilt for the next guest.
"""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
from pathlib import Path
from typing import Any

from allinone_kit import BOOT_TIMEOUT, Cloud, boot_marker, small_instance, virsh_domains
from stratus_agent.drivers.seed import nocloud as seed
from testsupport import REPO_ROOT, wait_until


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    found = obj.get("status", {}).get("conditions", [])
    return next((c for c in found if c["type"] == type_), {})


def guest_files(cloud: Cloud) -> Path:
    return cloud.dev.node_dir / "agent" / "guests"


def qemu_uid(uid: str) -> int:
    """The user the guest's QEMU process runs as (libvirt's pid file names the process)."""
    pid = Path(f"/run/libvirt/qemu/stratus-{uid}.pid").read_text().strip()
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return int(line.split()[1])


def test_guest_files_belong_to_the_guest_and_binary_user_data_reaches_the_seed(
    cloud: Cloud,
) -> None:
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples"))
    user_data = gzip.compress(b"#!/bin/sh\necho zipped-user-data\n")  # not UTF-8
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "zipped"},
              "data": {"userData": base64.b64encode(user_data).decode()}}  # fmt: skip
    cloud.kubectl("apply", "-f", "-", input=json.dumps(secret))
    for name in ("owned-a", "owned-b"):
        vm = small_instance(name, userDataSecretRef={"name": "zipped"})
        cloud.kubectl("apply", "-f", "-", input=json.dumps(vm))
    for name in ("owned-a", "owned-b"):
        cloud.kubectl("wait", "--for=condition=Ready", f"instance/{name}",
                      f"--timeout={BOOT_TIMEOUT:.0f}s")  # fmt: skip
    a, b = (cloud.instance(name)["metadata"]["uid"] for name in ("owned-a", "owned-b"))
    directory = guest_files(cloud)
    seed_a, disk_a = directory / f"{a}-seed.iso", directory / f"{a}-root.qcow2"
    assert seed.read_seed_iso(seed_a)["user-data"] == user_data
    owner_a, owner_b = qemu_uid(a), qemu_uid(b)
    assert len({owner_a, owner_b, 0, 64055}) == 4  # neither root nor libvirt-qemu, not shared
    for path in (seed_a, disk_a):
        assert (path.stat().st_uid, path.stat().st_mode & 0o777) == (owner_a, 0o600)
    # B's QEMU user cannot open A's files.
    for path in (seed_a, disk_a):
        denied = subprocess.run(
            ["setpriv", f"--reuid={owner_b}", f"--regid={owner_b}", "--clear-groups",
             "head", "-c", "1", str(path)], capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
    for name in ("owned-a", "owned-b"):
        cloud.kubectl("delete", "instance", name, "--timeout=120s")
    cloud.kubectl("delete", "secret", "zipped")


def test_an_edit_the_models_refuse_is_refused_at_admission_and_the_guest_lives(
    cloud: Cloud, tmp_path: Path
) -> None:
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples"))
    vm = small_instance("keeper")
    cloud.kubectl("apply", "-f", "-", input=json.dumps(vm))
    cloud.kubectl("wait", "--for=condition=Ready", "instance/keeper",
                  f"--timeout={BOOT_TIMEOUT:.0f}s")  # fmt: skip
    uid = cloud.instance("keeper")["metadata"]["uid"]
    patch = json.dumps({"spec": {"sshKeys": ["ssh-ed25519 \u00a0AAAAC3NzaC1lZDI1NTE5 me@host"]}})
    refused = cloud.dev.plane.kubectl_run(
        "patch", "instance", "keeper", "--type=merge", "-p", patch, check=False
    )
    assert refused.returncode != 0 and "spec.sshKeys[0]" in refused.stderr
    # Far more than 64 KiB of UTF-8 in fewer than 65,536 characters: refused by bytes.
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"spec": {"userData": "\u20ac" * 65_000}}))
    refused = cloud.dev.plane.kubectl_run(
        "patch", "instance", "keeper", "--type=merge", "--patch-file", str(big), check=False
    )
    assert refused.returncode != 0 and "spec.userData" in refused.stderr
    assert f"stratus-{uid}" in virsh_domains()
    assert condition(cloud.instance("keeper"), "Ready").get("status") == "True"

    # runStrategy Always: destroyed from outside, the node starts it again and says so.
    subprocess.run(["virsh", "-c", "qemu:///system", "destroy", f"stratus-{uid}"],
                   check=True, capture_output=True)  # fmt: skip

    def restarted() -> dict[str, Any] | None:
        found = cloud.instance("keeper")
        ready = condition(found, "Ready").get("status") == "True"
        return found if found["status"].get("restarts") == 1 and ready else None

    found = wait_until("the guest restarted", restarted, BOOT_TIMEOUT)
    assert found["status"]["lastRestartReason"]
    events = json.loads(cloud.kubectl("get", "events", "-o", "json"))["items"]
    assert any(e["involvedObject"]["name"] == "keeper" and e["reason"] == "GuestRestarting"
               for e in events)  # fmt: skip
    cloud.kubectl("delete", "instance", "keeper", "--timeout=120s")


def test_an_image_inside_the_node_is_refused_and_nothing_is_dispatched(cloud: Cloud) -> None:
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples"))
    apiserver = cloud.dev.plane.ports.apiserver
    inside = {
        "apiVersion": "stratus.io/v1alpha1",
        "kind": "Image",
        "metadata": {"name": "inside"},
        "spec": {"source": {"http": {"url": f"http://admin:hunter2@127.0.0.1:{apiserver}/"}}},
    }
    victim = small_instance("inside-vm", boot={"image": "inside"})
    cloud.kubectl("apply", "-f", "-", input=json.dumps(inside))
    cloud.kubectl("apply", "-f", "-", input=json.dumps(victim))

    def image() -> dict[str, Any]:
        return json.loads(cloud.kubectl("get", "image", "inside", "-o", "json"))

    wait_until("the Image refused", lambda: image().get("status", {}).get("phase") == "Failed")
    stalled = condition(image(), "Stalled")
    assert stalled["reason"] == "ImageSourceRefused"
    assert "hunter2" not in json.dumps(image()["status"])  # the URL's password, redacted
    wait_until("the Instance explains",
               lambda: condition(cloud.instance("inside-vm"), "Ready").get("reason")
               == "ImageFailed")  # fmt: skip
    uid = cloud.instance("inside-vm")["metadata"]["uid"]
    assert f"stratus-{uid}" not in virsh_domains()
    cloud.kubectl("delete", "instance", "inside-vm", "--timeout=120s")
    cloud.kubectl("delete", "image", "inside", "--timeout=60s")


def test_a_bridge_that_disappears_is_rebuilt(cloud: Cloud) -> None:
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples"))
    subprocess.run(["ovs-vsctl", "--timeout=10", "del-br", cloud.dev.bridge], check=True)
    vm = small_instance("after-bridge")
    cloud.kubectl("apply", "-f", "-", input=json.dumps(vm))
    cloud.kubectl("wait", "--for=condition=Ready", "instance/after-bridge",
                  f"--timeout={BOOT_TIMEOUT:.0f}s")  # fmt: skip
    boot_marker(cloud, "after-bridge", "STRATUS-GUEST: ready")
    bridges = subprocess.run(["ovs-vsctl", "--timeout=10", "list-br"], capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
    assert cloud.dev.bridge in bridges
    cloud.kubectl("delete", "instance", "after-bridge", "--timeout=120s")
