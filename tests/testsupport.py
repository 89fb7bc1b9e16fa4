"""Helpers shared by the test folders (on sys.path through pytest's `pythonpath`)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from stratus_api.v1alpha1 import Instance
from stratus_devcloud import controlplane

REPO_ROOT = Path(__file__).resolve().parents[1]
STRATUS = [sys.executable, "-m", "stratus_cli"]


def stratus(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The stratus command, as a user runs it."""
    return subprocess.run(
        [*STRATUS, *args], capture_output=True, text=True, timeout=timeout, check=False,
        cwd=REPO_ROOT, env=env,
    )  # fmt: skip


def dev_kubectl(
    state: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """kubectl as `stratus dev up --state-dir STATE` left it for the user."""
    return subprocess.run(
        [str(state / "bin" / "kubectl"), f"--kubeconfig={state / 'kubeconfig'}", *args],
        input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def pinned_kubernetes_version() -> str:
    """The k8s.io/kubernetes release hack/kube/go.mod requires (what build.sh stamps)."""
    for line in (REPO_ROOT / "hack" / "kube" / "go.mod").read_text().splitlines():
        fields = line.split()
        if fields[:1] == ["k8s.io/kubernetes"]:
            return fields[1]
    raise AssertionError("hack/kube/go.mod requires no k8s.io/kubernetes")


def placed_instance(
    name: str, node: str | None, *macs: tuple[str, str], deleting: bool = False
) -> Instance:
    """A parsed Instance of namespace team-a with a NIC on Network blue, placed on `node`
    (None: not yet), its status's interfaces given as (network, MAC); `deleting`: with a
    deletionTimestamp."""
    meta: dict[str, Any] = {"name": name, "namespace": "team-a", "uid": f"uid-{name}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-27T18:00:00Z"
    return Instance.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Instance", "metadata": meta,
        "spec": {"cpu": 1, "memory": "256Mi", "boot": {"image": "img"},
                 "networks": [{"name": "blue"}]},
        "status": {"node": node,
                   "interfaces": [{"network": net, "mac": mac} for net, mac in macs]},
    })  # fmt: skip


def processes_using(path: Path) -> list[str]:
    """Command lines of the processes (other than this one) that name `path`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(path) in cmdline:
                found.append(cmdline)
    return found


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def bad_object_cases() -> list[dict[str, Any]]:
    """tests/data/bad_objects.yaml: objects that break one rule each."""
    cases: list[dict[str, Any]] = load_yaml_documents(REPO_ROOT / "tests/data/bad_objects.yaml")[0]
    return cases


@dataclass
class Cluster:
    kubeconfig: Path
    bin_dir: Path
    local: controlplane.LocalControlPlane | None

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            check=False,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
            )
        return result

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    @property
    def env(self) -> dict[str, str]:
        """Environment for a process that talks to this cluster (kopf, kubectl)."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}:{os.environ['PATH']}",
        }


AGENT_TOKEN = "test-token-0123456789abcdef"

AGENT_AUTH = {"Authorization": f"Bearer {AGENT_TOKEN}"}


def guest_spec(**overrides: Any) -> dict[str, Any]:
    uid = str(uuid.uuid4())
    spec: dict[str, Any] = {
        "uid": uid,
        "name": "web",
        "namespace": "team-a",
        "generation": 1,
        "cpu": 1,
        "memoryBytes": 256 * 2**20,
        "disks": [
            {
                "name": "root",
                "image": {"uid": str(uuid.uuid4()), "name": "img", "url": "http://127.0.0.1/i"},
            }
        ],
        "nics": [],
        "cloudInit": {
            "instanceId": uid,
            "hostname": "web",
            "userData": base64.b64encode(b"#!/bin/sh\necho password=hunter2-secret").decode(),
        },
    }
    spec.update(overrides)
    return spec


def volume_spec(**overrides: Any) -> dict[str, Any]:
    """A NodeVolumeSpec in wire form: a blank file volume of 1 MiB."""
    spec: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "name": "data",
        "namespace": "team-a",
        "generation": 1,
        "backend": "file",
        "sizeBytes": 2**20,
    }
    spec.update(overrides)
    return spec


def disk_watcher(mark: str = "") -> str:
    """hack/guest-init/disk-watcher as user data, writing `mark` to empty disks if set."""
    script = (REPO_ROOT / "hack" / "guest-init" / "disk-watcher").read_text()
    return script.replace('MARK=""', f'MARK="{mark}"', 1)


def build_test_image() -> Path:
    """hack/build-test-image's qcow2 (built once, cached between runs)."""
    result = subprocess.run(
        [str(REPO_ROOT / "hack/build-test-image")],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(
            f"hack/build-test-image failed ({result.returncode}):\n{result.stderr}"
        )
    image = Path(result.stdout.strip().splitlines()[-1])
    assert image.is_file(), image
    return image


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60, poll: float = 0.25) -> Any:
    """`check()`'s first truthy result, polled until `timeout` seconds; else fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def until(what: str, check: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll `check()` on the event loop (in-process agents) until it holds; else fail."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


# -- the operator against a real API server (tests/cluster) --


def apply(cluster: Cluster, namespace: str, *objects: dict[str, Any]) -> None:
    docs = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(docs))


def instance(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"cpu": 1, "memory": "128Mi", "boot": {"image": "img"},
                            "networks": [{"name": "net"}]}  # fmt: skip
    body.update(spec)
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "Instance",
            "metadata": {"name": name}, "spec": body}  # fmt: skip


def basics(image_url: str) -> list[dict[str, Any]]:
    """The Network `net` and the Image `img` that `instance()` refers to."""
    return [
        {"apiVersion": "stratus.io/v1alpha1", "kind": "Network", "metadata": {"name": "net"},
         "spec": {"subnets": [{"cidr": "10.30.0.0/24", "gateway": "10.30.0.1"}]}},
        {"apiVersion": "stratus.io/v1alpha1", "kind": "Image", "metadata": {"name": "img"},
         "spec": {"source": {"http": {"url": image_url}}}},
    ]  # fmt: skip


def statuses(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    items = cluster.get_json("instances", "-n", namespace)["items"]
    return {i["metadata"]["name"]: i.get("status", {}) for i in items}


def ready_reason(status: dict[str, Any]) -> str | None:
    return next((c["reason"] for c in status.get("conditions", []) if c["type"] == "Ready"), None)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)


def qcow2_naming_data_file(path: Path, data_file: str) -> Path:
    """A qcow2 whose header names `data_file` as its raw external data file, made without
    qemu-img touching that file: `qemu-img create -o data_file=X` creates and truncates X,
    which for /etc/passwd wipes the machine's users. A decoy name of the same length is
    written first, then replaced in the header."""
    decoy = "d" * len(data_file)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={decoy},data_file_raw=on",
         path.name, "1M"],
        cwd=path.parent, check=True,
    )  # fmt: skip
    (path.parent / decoy).unlink()
    raw = path.read_bytes()
    at = raw.index(decoy.encode(), 72)
    path.write_bytes(raw[:at] + data_file.encode() + raw[at + len(decoy) :])
    return path


@dataclass(frozen=True)
class ApiCall:
    """One request in the API server's audit log: RBAC's words for it, and the answer."""

    verb: str
    group: str  # "" for the core group
    resource: str  # with its subresource: "instances/status"; "" for a non-resource URL
    path: str
    code: int

    @property
    def right(self) -> str:
        return f"{self.verb} {self.group or 'core'}/{self.resource}" if self.resource else (
            f"{self.verb} {self.path}")  # fmt: skip


def audited(log_dir: Path, user: str) -> list[ApiCall]:
    """Every request `user` made, from the audit logs in `log_dir` (rotated ones too)."""
    calls = []
    for log in sorted(log_dir.glob("audit*.log")):
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event["user"]["username"] != user:
                continue
            ref = event.get("objectRef") or {}
            resource = "/".join(x for x in (ref.get("resource"), ref.get("subresource")) if x)
            calls.append(ApiCall(event["verb"], ref.get("apiGroup") or "", resource,
                                 event["requestURI"].split("?")[0],
                                 int(event.get("responseStatus", {}).get("code", 0))))  # fmt: skip
    return calls


def granted(rules: list[dict[str, Any]]) -> set[str]:
    """Each right a Role's rules grant, in ApiCall.right's words (resource rules only)."""
    return {
        f"{verb} {group or 'core'}/{resource}"
        for rule in rules if "resources" in rule
        for group in rule.get("apiGroups", [])
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }  # fmt: skip


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(
    url: str, token: str | None, ca_file: Path | None = None, *, check_hostname: bool = True
) -> tuple[int, str]:
    """GET a /metrics endpoint over HTTPS (verified against `ca_file`, else not verified):
    the status code and the text."""
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else (
        ssl._create_unverified_context())  # fmt: skip
    context.check_hostname = check_hostname and ca_file is not None
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(found: Samples, metric: str, /, **labels: str) -> float | None:
    """The value of the one sample of `metric` whose labels include `labels`; None if
    there is none."""
    wanted = set(labels.items())
    values = [v for (n, ls), v in found.items() if n == metric and wanted <= ls]
    assert len(values) <= 1, f"{len(values)} samples of {metric} match {labels}"
    return values[0] if values else None


def promtool_check_metrics(text: str) -> str:
    """`promtool check metrics` on an exposition: its complaints (empty when none)."""
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, check=False)  # fmt: skip
    return (done.stdout + done.stderr).strip() if done.returncode else ""
