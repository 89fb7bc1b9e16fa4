"""`stratus dev up` / `dev down` as a user runs them: one cluster, nothing left, data kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testsupport import REPO_ROOT

STRATUS = [sys.executable, "-m", "stratus_cli"]


def stratus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STRATUS, *args], capture_output=True, text=True, timeout=300, check=False, cwd=REPO_ROOT
    )


def processes_using(state_dir: Path) -> list[str]:
    """Command lines of every process that mentions the state directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(state_dir) in cmdline and int(entry.name) != os.getpid():
            found.append(cmdline)
    return found


def pids(state_dir: Path) -> dict[str, str]:
    return {p.stem: p.read_text().strip() for p in sorted((state_dir / "run").glob("*.pid"))}


def test_up_twice_down_and_up_again(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    kubeconfig = state / "kubeconfig"
    kubectl = [str(state / "bin" / "kubectl"), f"--kubeconfig={kubeconfig}"]
    try:
        first = stratus("dev", "up", "--control-plane-only", "--state-dir", str(state))
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
        assert len([c for c in crds if c.endswith(".stratus.io")]) == 6

        subprocess.run(
            [*kubectl, "create", "configmap", "survivor", "--from-literal=k=v"],
            check=True,
            capture_output=True,
        )
        status = stratus("dev", "status", "--state-dir", str(state))
        assert status.returncode == 0 and "ready" in status.stdout
    finally:
        down = stratus("dev", "down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    assert processes_using(state) == []
    assert not list((state / "run").glob("*.pid"))
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
    assert processes_using(state) == []


def test_down_without_a_cloud_says_so(tmp_path: Path) -> None:
    result = stratus("dev", "down", "--state-dir", str(tmp_path / "none"))
    assert result.returncode == 0
    assert "nothing running" in result.stderr
    assert not (tmp_path / "none").exists()
