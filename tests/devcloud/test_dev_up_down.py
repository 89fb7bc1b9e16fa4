"""`stratus dev up` / `dev down` as a user runs them: one cluster, nothing left, data kept;
`down` needs nothing of the environment `up` had, and touches nothing of another cloud's."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratus_api.v1alpha1 import KINDS
from stratus_devcloud import controlplane, external, processes
from stratus_devcloud.allinone import DevCloud
from stratus_devcloud.nodeservices import NodeServices
from testsupport import pinned_kubernetes_version, processes_using, stratus


def bare_env(tmp_path: Path) -> dict[str, str]:
    """Not the environment `up` ran in: no STRATUS_KUBE_BIN_DIR, another HOME (so another
    ~/.cache/stratus, where nothing is built), a PATH with neither the venv nor kubectl."""
    home = tmp_path / "elsewhere"
    home.mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    if "PYTHONPATH" in os.environ:  # which Stratus code runs, not the cloud's environment
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def pids(state_dir: Path) -> dict[str, int]:
    return {r.name: r.pid for r in processes.recorded(state_dir / "run")}


def test_up_twice_down_and_up_again(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    kubeconfig = state / "kubeconfig"
    kubectl = [str(state / "bin" / "kubectl"), f"--kubeconfig={kubeconfig}"]
    # The first `up` finds the binaries through STRATUS_KUBE_BIN_DIR, a directory that is
    # gone by the time `down` runs.
    links = tmp_path / "kube-bin"
    links.mkdir()
    for binary in controlplane.kube_bin_dir().iterdir():
        (links / binary.name).symlink_to(binary)
    try:
        first = stratus(
            "dev", "up", "--control-plane-only", "--state-dir", str(state),
            env={**os.environ, "STRATUS_KUBE_BIN_DIR": str(links)},
        )  # fmt: skip
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == [
            f"export KUBECONFIG={kubeconfig}",
            f"export PATH={state / 'bin'}:$PATH",
        ]
        started = pids(state)
        assert set(started) == {"etcd", "kube-apiserver", "kube-controller-manager"}

        second = stratus("dev", "up", "--control-plane-only", "--state-dir", str(state))
        assert second.returncode == 0, second.stderr
        assert pids(state) == started
        assert len(processes_using(state)) == 3

        # Every CRD is installed and Established.
        crds = subprocess.run(
            [*kubectl, "get", "crd", "-o", "name"], capture_output=True, text=True, check=True
        ).stdout.split()
        installed = {c.rpartition("/")[2] for c in crds if c.endswith(".stratus.io")}
        assert installed == {f"{kind.crd.plural}.stratus.io" for kind in KINDS}

        subprocess.run(
            [*kubectl, "create", "configmap", "survivor", "--from-literal=k=v"],
            check=True,
            capture_output=True,
        )
        shutil.rmtree(links)
        status = stratus("dev", "status", "--state-dir", str(state), env=bare_env(tmp_path))
        assert status.returncode == 0, status.stdout + status.stderr
        for name, pid in started.items():
            assert f"running, pid {pid}" in status.stdout, name
    finally:
        down = stratus("dev", "down", "--state-dir", str(state), env=bare_env(tmp_path))
        if down.returncode != 0:  # leave nothing running, whatever failed
            processes.stop_all(state / "run")
    assert down.returncode == 0, down.stderr
    assert "stopped kube-controller-manager, kube-apiserver, etcd" in down.stderr
    assert processes_using(state) == []
    assert processes.recorded(state / "run") == []
    assert not (tmp_path / "elsewhere" / ".cache").exists()  # nothing was built for `down`
    assert stratus("dev", "status", "--state-dir", str(state)).returncode == 1

    again = stratus("dev", "up", "--control-plane-only", "--state-dir", str(state))
    try:
        assert again.returncode == 0, again.stderr
        kept = subprocess.run(
            [*kubectl, "get", "configmap", "survivor", "-o", "jsonpath={.data.k}"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert kept.stdout == "v"
    finally:
        stratus("dev", "down", "--state-dir", str(state))
        processes.stop_all(state / "run")
    assert processes_using(state) == []


def test_down_without_a_cloud_says_so(tmp_path: Path) -> None:
    result = stratus("dev", "down", "--state-dir", str(tmp_path / "none"))
    assert result.returncode == 0
    assert "nothing running" in result.stderr
    assert not (tmp_path / "none").exists()


def test_down_leaves_a_process_that_took_over_a_recorded_pid(tmp_path: Path) -> None:
    """The kernel reuses pids: a record naming one that now runs something else (here a
    `cat`, with a start time that is not the recorded one) must not get it killed."""
    state = tmp_path / "dev"
    bystander = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
    try:
        earlier = processes.Daemon("etcd", ("/bin/sleep", "300"), state / "run", state / "logs")
        earlier.start()
        record = earlier.tracked.record()
        assert record is not None
        earlier.stop(grace=5)
        forged = {**dataclasses.asdict(record), "pid": bystander.pid}
        earlier.tracked.record_file.write_text(json.dumps(forged))

        down = stratus("dev", "down", "--state-dir", str(state), env=bare_env(tmp_path))
        assert down.returncode == 0, down.stderr
        assert f"etcd: pid {bystander.pid} is now another process; left alone" in down.stderr
        assert "stopped nothing" in down.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def ovs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ovs-vsctl", "--timeout=10", *args], capture_output=True, text=True, check=check
    )


@pytest.fixture
def node_services_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: Open vSwitch and libvirtd")
    missing = [t for t in ("ovs-vsctl", "ovsdb-server", "libvirtd", "virsh") if not _which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: run hack/install-deps")


def _which(binary: str) -> str | None:
    return shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")


@pytest.fixture
def two_clouds(tmp_path: Path, node_services_tools: None) -> Iterator[tuple[DevCloud, DevCloud]]:
    """Two local clouds' node sides on one machine: `ours` as `up` leaves it (node record,
    OVS and libvirtd started unless already running, its bridge and node files), and
    `theirs` stood in for by its bridges and node files made by hand (a second control plane
    would cost minutes and change nothing here). Each has its external bridge, as `up`
    makes it."""
    ours, theirs = DevCloud(tmp_path / "ours"), DevCloud(tmp_path / "theirs")
    ours._record_node()
    ours.node.up()
    try:
        for cloud in (ours, theirs):
            ovs("--may-exist", "add-br", cloud.bridge,
                "--", "set", "Bridge", cloud.bridge, "datapath_type=netdev")  # fmt: skip
            cloud.node_dir.mkdir(parents=True, exist_ok=True)
            (cloud.node_dir / "disk.qcow2").write_text("")
        external.ensure(ours.external_bridge, ours.external_gateway)
        external.ensure(theirs.external_bridge, other_range(ours.external_gateway))
        yield ours, theirs
    finally:
        ovs("--if-exists", "del-br", theirs.bridge, check=False)
        external.remove(theirs.external_bridge)
        external.remove(ours.external_bridge)
        shutil.rmtree(theirs.node_dir, ignore_errors=True)
        stratus("dev", "down", "--state-dir", str(ours.state_dir))
        # Should `down` itself have failed: leave the machine as it was all the same.
        ovs("--if-exists", "del-br", ours.bridge, check=False)
        shutil.rmtree(ours.node_dir, ignore_errors=True)
        left = processes.stop_all(ours.run_dir).stopped
        processes.reap_children()
    assert left == []


def test_down_removes_its_own_bridge_and_files_only(
    tmp_path: Path, two_clouds: tuple[DevCloud, DevCloud]
) -> None:
    ours, theirs = two_clouds
    assert ours.bridge != theirs.bridge
    started_ovs = processes.Tracked("ovs-vswitchd", ours.run_dir).running()

    down = stratus("dev", "down", "--state-dir", str(ours.state_dir), env=bare_env(tmp_path))
    assert down.returncode == 0, down.stderr

    bridges = ovs("list-br").stdout.split()
    assert ours.bridge not in bridges
    assert theirs.bridge in bridges
    # The external bridge and the host's address on it went; the other cloud's stayed.
    assert ours.external_bridge not in bridges
    assert external.holders(ours.external_gateway.network, besides="") == []
    assert theirs.external_bridge in bridges
    assert external.addresses_of(theirs.external_bridge) != []
    assert not ours.node_dir.exists()
    assert (theirs.node_dir / "disk.qcow2").exists()
    if started_ovs:
        # Ours to stop, but the other cloud's bridge still needs it.
        assert "left Open vSwitch running" in down.stderr
        assert processes.Tracked("ovs-vswitchd", ours.run_dir).running()


def other_range(taken: ipaddress.IPv4Interface) -> ipaddress.IPv4Interface:
    """A /24 of 172.24.5-255 that is not `taken`'s."""
    third = 5 + (taken.ip.packed[2] - 5 + 1) % 251
    return ipaddress.IPv4Interface(f"172.24.{third}.1/24")


def free_external_range() -> ipaddress.IPv4Interface:
    """A /24 of 172.24.5-255 no device of this machine has an address in."""
    for _ in range(50):
        gateway = ipaddress.IPv4Interface(f"172.24.{5 + secrets.randbelow(251)}.1/24")
        if not external.holders(gateway.network, besides=""):
            return gateway
    raise AssertionError("no free /24 in 172.24.5.0-172.24.255.0")


@pytest.fixture
def host_ovs(tmp_path: Path) -> Iterator[None]:
    """The host's Open vSwitch (started unless running; stopped after only if this test
    started it and no other bridge is on it)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: Open vSwitch")
    if not (_which("ovs-vsctl") and _which("ovs-vswitchd")):
        pytest.skip("Open vSwitch not installed: run hack/install-deps")
    services = NodeServices(tmp_path / "dev")
    services.up(libvirt=False)
    try:
        yield
    finally:
        services.stop()
        processes.reap_children()


def test_the_external_bridge_on_real_ovs(host_ovs: None) -> None:
    """What `up` makes for the external network and `down` removes, on a random name and
    range: a netdev bridge whose LOCAL port holds the host's address, up; idempotent; a
    range another bridge holds is refused."""
    bridge, gateway = f"{external.BRIDGE_PREFIX}{secrets.token_hex(3)}", free_external_range()
    rival = f"{external.BRIDGE_PREFIX}{secrets.token_hex(3)}"
    try:
        external.ensure(bridge, gateway)
        assert ovs("get", "Bridge", bridge, "datapath_type").stdout.strip() == "netdev"
        assert external.addresses_of(bridge) == [gateway]
        link = subprocess.run(["ip", "-o", "link", "show", "dev", bridge],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert ",UP" in link or "<UP" in link
        # The host's connected route to the range goes through the bridge.
        route = subprocess.run(["ip", "-4", "route", "get", str(gateway.network[2])],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert f"dev {bridge}" in route

        # Again, with a stray address on it: the same bridge, only the gateway's address.
        subprocess.run(["ip", "addr", "add", "172.24.3.9/24", "dev", bridge], check=True)
        external.ensure(bridge, gateway)
        assert ovs("list-br").stdout.split().count(bridge) == 1
        assert external.addresses_of(bridge) == [gateway]

        # Another cloud's bridge wanting the range is refused, and nothing is made.
        with pytest.raises(external.ExternalNetworkError, match=re.escape(f"{bridge} ({gateway})")):
            external.ensure(rival, gateway)
        assert rival not in ovs("list-br").stdout.split()
    finally:
        external.remove(bridge)
        external.remove(rival)
    assert bridge not in ovs("list-br").stdout.split()
    assert external.holders(gateway.network, besides="") == []
    gone = subprocess.run(["ip", "link", "show", "dev", bridge], capture_output=True, check=False)
    assert gone.returncode != 0


def test_the_control_plane_reports_the_pinned_version(tmp_path: Path) -> None:
    """Unstamped binaries say v0.0.0-master+$Format:%H$, which `kubectl version` refuses
    and Helm charts with a kubeVersion constraint fail on."""
    pinned = pinned_kubernetes_version()
    assert pinned.startswith("v1.")
    plane = controlplane.LocalControlPlane(tmp_path / "dev")
    try:
        plane.up()
        shown = plane.kubectl_run("version", "-o", "json", check=False)
        assert shown.returncode == 0, shown.stderr
        server = json.loads(shown.stdout)["serverVersion"]
        assert server["gitVersion"] == pinned
        assert (server["major"], server["minor"]) == ("1", pinned.split(".")[1])
    finally:
        plane.down()
    # The node's binaries too (the kubelet reports its version in the Node's status).
    for name in ("kube-controller-manager", "kube-scheduler", "kubelet"):
        binary = plane.bin_dir() / name
        said = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                              check=True)  # fmt: skip
        assert said.stdout.split() == ["Kubernetes", pinned], name
