"""A file Volume in real guests on the all-in-one: one guest writes to it, a second guest
reads the same bytes after the first is gone; deleting the Volume leaves no file."""

from __future__ import annotations

import json

from allinone_kit import BOOT_TIMEOUT, Cloud, boot_marker, small_instance
from stratus_api.volume_wire import disk_serial
from testsupport import REPO_ROOT, wait_until

FIND_DISK = """#!/bin/sh
for d in /sys/block/vd*; do
  [ "$(cat "$d/serial" 2>/dev/null)" = "{serial}" ] && dev=/dev/${{d##*/}}
done
echo "VOL-DEV ${{dev:-none}}"
"""


def test_data_written_by_one_guest_is_read_by_the_next(cloud: Cloud) -> None:
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples"))  # the image, type and network
    volume = {"apiVersion": "stratus.io/v1alpha1", "kind": "Volume",
              "metadata": {"name": "notes"}, "spec": {"size": "64Mi"}}  # fmt: skip
    cloud.kubectl("apply", "-f", "-", input=json.dumps(volume))
    uid = json.loads(cloud.kubectl("get", "volume", "notes", "-o", "json"))["metadata"]["uid"]
    find = FIND_DISK.format(serial=disk_serial(uid))

    write = find + 'printf "STRATUS-MARK-%s" 42 | dd of="$dev" bs=512 count=1 conv=sync && sync '
    write += "&& echo VOL-WROTE\n"
    writer = small_instance("writer", volumes=[{"name": "notes"}], userData=write)
    cloud.kubectl("apply", "-f", "-", input=json.dumps(writer))
    console = boot_marker(cloud, "writer", "STRATUS-GUEST: user-data exit=")
    assert "VOL-DEV /dev/vdb" in console and "VOL-WROTE" in console, console[-2000:]
    notes = json.loads(cloud.kubectl("get", "volume", "notes", "-o", "json"))["status"]
    assert (notes["phase"], notes["node"], notes["attachedTo"]) == ("InUse", "local", "writer")

    cloud.kubectl("delete", "instance", "writer", f"--timeout={BOOT_TIMEOUT:.0f}s")
    wait_until("notes free again", lambda: json.loads(cloud.kubectl(
        "get", "volume", "notes", "-o", "json"))["status"]["phase"] == "Available")  # fmt: skip

    read = find + 'echo "VOL-READ $(head -c 15 "$dev")"\n'
    reader = small_instance("reader", volumes=[{"name": "notes"}], userData=read)
    cloud.kubectl("apply", "-f", "-", input=json.dumps(reader))
    console = boot_marker(cloud, "reader", "STRATUS-GUEST: user-data exit=")
    assert "VOL-READ STRATUS-MARK-42" in console, console[-2000:]

    cloud.kubectl("delete", "instance", "reader", f"--timeout={BOOT_TIMEOUT:.0f}s")
    cloud.kubectl("delete", "volume", "notes", "--timeout=60s")
    volumes = cloud.dev.node_dir / "agent" / "volumes"
    assert notes["location"].startswith(str(volumes))
    assert not list(volumes.glob(f"*{uid}*"))
