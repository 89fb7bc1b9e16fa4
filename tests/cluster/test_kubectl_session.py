"""A kubectl session as a user would type it, against the real API server."""

from __future__ import annotations

import json

from testsupport import REPO_ROOT, Cluster

EXAMPLES = str(REPO_ROOT / "examples")


def test_user_session(cluster: Cluster, namespace: str) -> None:
    def k(*args: str, check: bool = True) -> str:
        result = cluster.kubectl(*args, "-n", namespace, check=check)
        return result.stdout + result.stderr

    # Installing the CRDs again is harmless; then the examples.
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    applied = k("apply", "-f", EXAMPLES)
    for line in ("instance.stratus.io/demo created", "network.stratus.io/default created"):
        assert line in applied

    # Printer columns.
    header = k("get", "instances").splitlines()[0].split()
    assert header == ["NAME", "PHASE", "NODE", "IP", "AGE"]
    assert k("get", "volumes").splitlines()[0].split() == [
        "NAME",
        "PHASE",
        "SIZE",
        "BACKEND",
        "ATTACHEDTO",
        "AGE",
    ]
    assert k("get", "networks").split()[:6] == ["NAME", "TYPE", "CIDR", "SEGMENT", "AGE", "default"]
    assert k("get", "images").splitlines()[0].split() == ["NAME", "PHASE", "FORMAT", "SIZE", "AGE"]
    cluster.kubectl("apply", "-f", str(REPO_ROOT / "examples" / "nodes" / "hypervisor.yaml"))
    hypervisors = cluster.kubectl("get", "hypervisors").stdout.splitlines()[0].split()
    assert hypervisors == ["NAME", "READY", "VIRTTYPE", "CPU", "MEMORY", "AGE"]
    itypes = cluster.kubectl("get", "itype", "s1.small").stdout.splitlines()
    assert itypes[1].split()[:4] == ["s1.small", "1", "256Mi", "1Gi"]

    # Short names and the category.
    assert "demo" in k("get", "vm")
    everything = k("get", "stratus")
    for name in (
        "instance.stratus.io/demo",
        "network.stratus.io/default",
        "volume.stratus.io/data",
        "image.stratus.io/stratus-test",
    ):
        assert name in everything

    # describe shows the spec; explain teaches the API from the model docstrings.
    described = k("describe", "instance", "demo")
    assert "Instance Type:  s1.small" in described and "stratus-test" in described
    explained = cluster.kubectl("explain", "instance.spec.boot").stdout
    assert "exactly one of image or volume" in explained
    assert "copy-on-write" in cluster.kubectl("explain", "instance.spec.boot.image").stdout

    # The operator's view: status through the status subresource, then wait on a condition.
    # Until a controller says which generation it saw, kubectl wait (as kstatus) waits.
    status = {
        "status": {
            "observedGeneration": 1,
            "phase": "Running",
            "node": "node-1",
            "interfaces": [{"network": "default", "ip": "10.20.0.17", "mac": "52:54:00:00:00:01"}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "GuestRunning"}],
        }
    }
    k("patch", "instance", "demo", "--subresource=status", "--type=merge", "-p", json.dumps(status))
    assert "condition met" in k("wait", "--for=condition=Ready", "--timeout=20s", "instance/demo")
    row = k("get", "instance", "demo", "--no-headers").split()
    assert row[:4] == ["demo", "Running", "node-1", "10.20.0.17"]
    # A plain update cannot write status: it belongs to the subresource.
    k("patch", "instance", "demo", "--type=merge", "-p", '{"status": {"phase": "Failed"}}')
    assert cluster.get_json("instance", "demo", "-n", namespace)["status"]["phase"] == "Running"

    # Delete waits on a finalizer until its owner removes it.
    k(
        "patch",
        "instance",
        "demo",
        "--type=merge",
        "-p",
        '{"metadata": {"finalizers": ["stratus.io/test"]}}',
    )
    k("delete", "instance", "demo", "--wait=false")
    pending = cluster.get_json("instance", "demo", "-n", namespace)
    assert pending["metadata"]["deletionTimestamp"]
    assert (
        cluster.kubectl(
            "wait", "--for=delete", "--timeout=2s", "instance/demo", "-n", namespace, check=False
        ).returncode
        != 0
    )
    k("patch", "instance", "demo", "--type=merge", "-p", '{"metadata": {"finalizers": null}}')
    k("wait", "--for=delete", "--timeout=30s", "instance/demo")
    assert "NotFound" in k("get", "instance", "demo", check=False)

    k("delete", "-f", EXAMPLES, "--ignore-not-found")
    cluster.kubectl("delete", "-f", str(REPO_ROOT / "examples" / "nodes"), "--ignore-not-found")
