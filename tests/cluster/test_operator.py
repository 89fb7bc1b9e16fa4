"""The operator against the real API server, with agents on the fake compute driver."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stratus_devcloud.controlplane import free_port
from testsupport import REPO_ROOT, Cluster, wait_until

STRATUS = [sys.executable, "-m", "stratus_cli"]


@dataclass
class FakeAgent:
    name: str
    url: str
    token: str
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*STRATUS, "agent", "--config", str(self.config)],
            stdout=self.log.open("a"), stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.request("GET", "/healthz")
                return
            except OSError:
                assert self.process.poll() is None, self.log.read_text()
                time.sleep(0.1)
        raise AssertionError(f"agent did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as response:
            return json.loads(response.read())

    def guest_uids(self) -> set[str]:
        return {g["uid"] for g in self.request("GET", "/v1/guests")["guests"]}


@pytest.fixture
def fake_agent(cluster: Cluster, tmp_path: Path) -> Iterator[FakeAgent]:
    name = f"fake-{uuid.uuid4().hex[:8]}"
    token = secrets.token_urlsafe(24)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    port = free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"node_name: {name}\ntoken_file: {token_file}\nstate_dir: {tmp_path / 'state'}\n"
        f"compute: fake\nlisten: {{host: 127.0.0.1, port: {port}, insecure: true}}\n"
        "heartbeat_seconds: 2\n"
    )
    agent = FakeAgent(name, f"http://127.0.0.1:{port}", token, config, tmp_path / "agent.log")
    agent.start()
    cluster.kubectl("create", "namespace", "stratus-system", check=False)
    cluster.kubectl(
        "-n", "stratus-system", "create", "secret", "generic", f"agent-{name}",
        f"--from-file=token={token_file}",
    )  # fmt: skip
    hypervisor = {
        "apiVersion": "stratus.io/v1alpha1",
        "kind": "Hypervisor",
        "metadata": {"name": name, "labels": {"stratus.io/test": name}},
        "spec": {
            "endpoint": agent.url,
            "tokenSecretRef": {"namespace": "stratus-system", "name": f"agent-{name}"},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(hypervisor))
    try:
        yield agent
    finally:
        cluster.kubectl("delete", "hypervisor", name, "--wait=false", check=False)
        cluster.kubectl("-n", "stratus-system", "delete", "secret", f"agent-{name}", check=False)
        agent.stop()


@dataclass
class Operator:
    log: Path
    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=self.log.open("a"), stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )  # fmt: skip

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[Operator]:
    running = Operator(
        tmp_path / "operator.log",
        [*STRATUS, "operator", "--namespace", namespace],
        {**cluster.env, "PYTHONUNBUFFERED": "1"},
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()
        # Leave nothing behind: the namespace goes, so Instances must lose their finalizer.
        for kind in ("instances", "images", "networks"):
            cluster.kubectl("-n", namespace, "patch", kind, "--all", "--type=merge",
                            "-p", '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip


def apply(cluster: Cluster, namespace: str, *objects: dict[str, Any]) -> None:
    docs = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(docs))


def instance(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"cpu": 1, "memory": "128Mi", "boot": {"image": "img"},
                            "networks": [{"name": "net"}]}  # fmt: skip
    body.update(spec)
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "Instance",
            "metadata": {"name": name}, "spec": body}  # fmt: skip


BASICS = [
    {"apiVersion": "stratus.io/v1alpha1", "kind": "Network", "metadata": {"name": "net"},
     "spec": {"subnets": [{"cidr": "10.30.0.0/24", "gateway": "10.30.0.1"}]}},
    {"apiVersion": "stratus.io/v1alpha1", "kind": "Image", "metadata": {"name": "img"},
     "spec": {"source": {"http": {"url": "http://127.0.0.1:9/img.qcow2"}}}},
]  # fmt: skip


def statuses(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    items = cluster.get_json("instances", "-n", namespace)["items"]
    return {i["metadata"]["name"]: i.get("status", {}) for i in items}


def ready_reason(status: dict[str, Any]) -> str | None:
    return next((c["reason"] for c in status.get("conditions", []) if c["type"] == "Ready"), None)


def test_instance_runs_and_is_deleted_from_its_node(
    cluster: Cluster, namespace: str, fake_agent: FakeAgent, operator: Operator
) -> None:
    apply(
        cluster,
        namespace,
        *BASICS,
        instance("web", nodeSelector={"stratus.io/test": fake_agent.name}),
    )
    cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "instance/web",
                    "--timeout=60s")  # fmt: skip
    web = cluster.get_json("instance", "web", "-n", namespace)
    status = web["status"]
    assert status["phase"] == "Running" and status["node"] == fake_agent.name
    assert status["interfaces"][0]["ip"] == "10.30.0.2"
    assert status["observedGeneration"] == web["metadata"]["generation"]
    assert "stratus.io/finalizer" in web["metadata"]["finalizers"]
    assert fake_agent.guest_uids() == {web["metadata"]["uid"]}

    cluster.kubectl("-n", namespace, "patch", "instance", "web", "--type=merge",
                    "-p", '{"spec": {"runStrategy": "Halted"}}')  # fmt: skip
    wait_until("Stopped", lambda: statuses(cluster, namespace)["web"].get("phase") == "Stopped")

    cluster.kubectl("-n", namespace, "delete", "instance", "web", "--timeout=60s")
    assert fake_agent.guest_uids() == set()


def test_problems_are_reported_on_the_named_field(
    cluster: Cluster, namespace: str, fake_agent: FakeAgent, operator: Operator
) -> None:
    selector = {"stratus.io/test": fake_agent.name}
    apply(
        cluster, namespace, *BASICS,
        instance(
            "no-type", cpu=None, memory=None, instanceType="missing-type", nodeSelector=selector
        ),
        instance("taken-ip", networks=[{"name": "net", "ip": "10.30.0.1"}], nodeSelector=selector),
        instance("no-net", networks=[{"name": "nowhere"}], nodeSelector=selector),
        instance("nowhere", nodeSelector={"stratus.io/test": "no-such-node"}),
    )  # fmt: skip

    def reported() -> dict[str, dict[str, Any]] | None:
        found = statuses(cluster, namespace)
        if len(found) < 4 or any(ready_reason(found[n]) is None for n in found if n != "nowhere"):
            return None
        nowhere = found["nowhere"].get("conditions", [])
        return found if any(c["type"] == "Scheduled" for c in nowhere) else None

    found = wait_until("conditions on every Instance", reported)
    assert ready_reason(found["no-type"]) == "InstanceTypeNotFound"
    taken = next(c for c in found["taken-ip"]["conditions"] if c["type"] == "Ready")
    assert taken["reason"] == "AddressUnavailable"
    assert taken["message"].startswith("spec.networks[0].ip: 10.30.0.1 is the gateway")
    assert found["taken-ip"]["phase"] == "Failed"
    assert ready_reason(found["no-net"]) == "NetworkNotFound"
    scheduled = next(c for c in found["nowhere"]["conditions"] if c["type"] == "Scheduled")
    assert scheduled["reason"] == "Unschedulable" and "nodeSelector" in scheduled["message"]

    # The missing InstanceType appears: the Instance goes ahead on its own.
    name = "missing-type"
    itype = {"apiVersion": "stratus.io/v1alpha1", "kind": "InstanceType",
             "metadata": {"name": name}, "spec": {"cpu": 1, "memory": "128Mi"}}  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=json.dumps(itype))
    try:
        cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "instance/no-type",
                        "--timeout=60s")  # fmt: skip
    finally:
        cluster.kubectl("delete", "instancetype", name, check=False)


def test_many_instances_restarts_and_resync(
    cluster: Cluster, namespace: str, fake_agent: FakeAgent, operator: Operator
) -> None:
    count = int(os.environ.get("STRATUS_TEST_INSTANCES", "100"))
    selector = {"stratus.io/test": fake_agent.name}
    apply(cluster, namespace, *BASICS,
          *(instance(f"vm-{i:03d}", nodeSelector=selector) for i in range(count)))  # fmt: skip

    # Kill the operator while it is provisioning, start it again: no guest twice.
    wait_until("some Instances dispatched", lambda: len(fake_agent.guest_uids()) >= 5)
    operator.kill()
    operator.start()

    def all_running() -> bool:
        found = statuses(cluster, namespace)
        return len(found) == count and all(s.get("phase") == "Running" for s in found.values())

    wait_until(f"{count} Instances Running", all_running, timeout=300)
    items = cluster.get_json("instances", "-n", namespace)["items"]
    uids = {i["metadata"]["uid"] for i in items}
    assert fake_agent.guest_uids() == uids
    ips = [i["status"]["interfaces"][0]["ip"] for i in items]
    assert len(set(ips)) == count  # no address handed out twice

    # A guest that belongs to no Instance is removed; guests lost by the node come back.
    orphan = str(uuid.uuid4())
    spec = {"uid": orphan, "name": "orphan", "namespace": namespace, "generation": 1, "cpu": 1,
            "memoryBytes": 2**27, "disks": [{"name": "root"}],
            "cloudInit": {"instanceId": orphan, "hostname": "orphan"}}  # fmt: skip
    fake_agent.request("PUT", f"/v1/guests/{orphan}", spec)
    fake_agent.stop()  # the fake driver forgets every guest
    fake_agent.start()
    fake_agent.request("PUT", f"/v1/guests/{orphan}", spec)
    wait_until("the node resynced", lambda: fake_agent.guest_uids() == uids, timeout=120)
