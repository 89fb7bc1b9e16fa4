"""Per-guest QEMU users on real libvirt: one guest's QEMU cannot open another guest's files.

Each guest's domain carries a static DAC label (+UID:+GID from the agent's range, relabel
no); its overlay and seed ISO are its own, 0600; the cached base image is root's, 0644, and
stays so (libvirt never chowns it); the console log is virtlogd's (root, 0600). The check
reads the files as the other guest's user would, with setpriv.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stratus_api import naming

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from conftest import AgentUnderTest, Node

    SpecFactory = Callable[..., dict[str, Any]]
    StartAgent = Callable[..., Awaitable[AgentUnderTest]]

SECRET = "db-password=correct-horse"


def qemu_ids(uid: str) -> tuple[int, int]:
    """Real uid and gid of the guest's running QEMU process, from /proc."""
    pid = Path(f"/run/libvirt/qemu/{naming.domain_name(uid)}.pid").read_text().strip()
    status = Path(f"/proc/{pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(\d+)", status, re.M)
    gids = re.search(r"^Gid:\s+(\d+)", status, re.M)
    assert uids and gids, status
    return int(uids.group(1)), int(gids.group(1))


def read_as(uid: int, gid: int, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "cat", str(path)],
        capture_output=True, text=True, errors="replace", timeout=30, check=False,
    )  # fmt: skip


def guest(make_guest_spec: SpecFactory, hostname: str) -> dict[str, Any]:
    spec = make_guest_spec(name=hostname)
    spec["cloudInit"] = {
        "instanceId": f"i-{spec['uid'][:8]}",
        "hostname": hostname,
        "userData": base64.b64encode(f"#!/bin/sh\necho {SECRET}\n".encode()).decode(),
    }
    return spec


async def test_guests_run_as_their_own_users_and_cannot_read_each_others_files(
    agent: AgentUnderTest, make_guest_spec: SpecFactory, libvirt_node: Node
) -> None:
    a, b = guest(make_guest_spec, "vm-a"), guest(make_guest_spec, "vm-b")
    await agent.put(a)
    await agent.put(b)
    for spec in (a, b):
        await agent.wait_for_state(spec["uid"], "Running")
    for spec in (a, b):
        markers = await agent.wait_for_marker(spec["uid"], "ready")
        assert "user-data exit=0" in markers, agent.diagnostics(spec["uid"])

    a_ids, b_ids = qemu_ids(a["uid"]), qemu_ids(b["uid"])
    assert a_ids != b_ids and 0 not in a_ids + b_ids
    assert a_ids[0] != 64055 and b_ids[0] != 64055  # not libvirt-qemu, shared by all
    xml = libvirt_node.domain_xml(a["uid"])
    assert "<seclabel type='static' model='dac' relabel='no'>" in xml
    assert f"<label>+{a_ids[0]}:+{a_ids[1]}</label>" in xml

    guests = libvirt_node.guests_dir
    a_files = {
        "seed": guests / naming.seed_iso_file(a["uid"]),
        "overlay": guests / naming.root_disk_file(a["uid"]),
        "console": guests / naming.console_log_file(a["uid"]),
    }
    for name, path in a_files.items():
        denied = read_as(*b_ids, path)
        assert denied.returncode != 0, f"B's user read A's {name}"
        assert "Permission denied" in denied.stderr, denied.stderr
    assert (a_files["seed"].stat().st_uid, a_files["seed"].stat().st_mode & 0o777) == (
        a_ids[0],
        0o600,
    )
    assert (a_files["overlay"].stat().st_uid, a_files["overlay"].stat().st_mode & 0o777) == (
        a_ids[0],
        0o600,
    )
    # A's own user reads its seed (the user-data is there) - the denial above is not luck.
    own = read_as(*a_ids, a_files["seed"])
    assert own.returncode == 0 and SECRET in own.stdout

    # The base image both overlays stand on: readable by both, owned by neither.
    base = libvirt_node.state_dir / "images" / naming.image_cache_file(libvirt_node.image_uid)
    st = base.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o644)
    assert read_as(*b_ids, base).returncode == 0


async def test_users_are_recovered_after_an_agent_restart(
    start_agent: StartAgent, make_guest_spec: SpecFactory
) -> None:
    first = await start_agent()
    a = guest(make_guest_spec, "vm-c")
    await first.put(a)
    await first.wait_for_state(a["uid"], "Running")
    a_ids = qemu_ids(a["uid"])
    await first.stop()

    second = await start_agent()
    b = guest(make_guest_spec, "vm-d")
    await second.put(b)
    await second.wait_for_state(b["uid"], "Running")
    assert qemu_ids(b["uid"]) != a_ids  # the restarted agent knew A's user was taken
    await second.put(a)  # the same spec again keeps A's user
    await second.wait_for_state(a["uid"], "Running")
    assert f"+{a_ids[0]}:+{a_ids[1]}" in subprocess.run(
        ["virsh", "-c", "qemu:///system", "dumpxml", "--inactive", naming.domain_name(a["uid"])],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert os.stat(second.node.guests_dir / naming.root_disk_file(a["uid"])).st_uid == a_ids[0]
