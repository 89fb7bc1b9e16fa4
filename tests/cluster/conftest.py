"""A real Kubernetes API for the tests in this folder.

By default one local control plane (etcd + kube-apiserver + kube-controller-manager, built
from Go modules) is started for the whole session in a temporary state directory and stopped
at the end. With STRATUS_TEST_KUBECONFIG set, that cluster is used instead; the CRDs are
applied to it either way. Each test gets a namespace of its own.
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stratus_devcloud import controlplane
from stratus_devcloud.controlplane import free_port
from testsupport import REPO_ROOT, Cluster

STRATUS = [sys.executable, "-m", "stratus_cli"]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    bin_dir = controlplane.kube_bin_dir()
    external = os.environ.get("STRATUS_TEST_KUBECONFIG")
    if external:
        found = Cluster(Path(external), bin_dir, None)
        controlplane.apply_and_establish_crds(
            lambda *args: found.kubectl(*args, check=False), REPO_ROOT / "crds"
        )
        yield found
        return
    plane = controlplane.LocalControlPlane(tmp_path_factory.mktemp("cluster"), bin_dir)
    try:
        plane.up(crd_dir=REPO_ROOT / "crds")
        yield Cluster(plane.kubeconfig, bin_dir, plane)
    finally:
        plane.down()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


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

    def served(self, method: str, route: str, code: int = 200) -> int:
        """How many `method` requests to `route` the agent answered with `code` (its
        /metrics)."""
        req = urllib.request.Request(
            self.url + "/metrics", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as response:
            text = response.read().decode()
        wanted = {"method": method, "route": route, "code": str(code)}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "stratus_agent_requests_total" and sample.labels == wanted:
                    return int(sample.value)
        return 0

    def guest_uids(self) -> set[str]:
        return {g["uid"] for g in self.request("GET", "/v1/guests")["guests"]}


StartFakeAgent = Callable[..., FakeAgent]


@pytest.fixture
def start_fake_agent(cluster: Cluster, tmp_path: Path) -> Iterator[StartFakeAgent]:
    """Start agents on the fake compute driver, each registered as a Hypervisor labelled
    stratus.io/test=NAME; `spec` is merged into its Hypervisor spec; `backends`: the local
    volume backends it serves (fake pools)."""
    started: list[FakeAgent] = []

    def start(
        cpu: int = 1024, volume_pool: int = 2**50, backends: tuple[str, ...] = ("file",),
        physical_networks: dict[str, str] | None = None, tunnel_ip: str | None = None,
        **spec: Any,
    ) -> FakeAgent:  # fmt: skip
        agent = _fake_agent(
            cluster, tmp_path / f"agent-{len(started)}", cpu, volume_pool, spec, backends,
            physical_networks or {}, tunnel_ip,
        )  # fmt: skip
        started.append(agent)
        return agent

    try:
        yield start
    finally:
        for agent in started:
            cluster.kubectl("delete", "hypervisor", agent.name, "--wait=false", check=False)
            cluster.kubectl("-n", "stratus-system", "delete", "secret", f"agent-{agent.name}",
                            check=False)  # fmt: skip
            agent.stop()


@pytest.fixture
def fake_agent(start_fake_agent: StartFakeAgent) -> FakeAgent:
    return start_fake_agent()


def _fake_agent(
    cluster: Cluster,
    tmp_path: Path,
    cpu: int,
    volume_pool: int,
    spec: dict[str, Any],
    backends: tuple[str, ...] = ("file",),
    physical_networks: dict[str, str] | None = None,
    tunnel_ip: str | None = None,
) -> FakeAgent:
    tmp_path.mkdir(parents=True)
    name = f"fake-{uuid.uuid4().hex[:8]}"
    token = secrets.token_urlsafe(24)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    port = free_port()
    config = tmp_path / "agent.yaml"
    network = {"physical_networks": physical_networks or {}}
    if tunnel_ip is not None:
        network["tunnel"] = {"local_ip": tunnel_ip}  # type: ignore[dict-item]
    config.write_text(
        f"node_name: {name}\ntoken_file: {token_file}\nstate_dir: {tmp_path / 'state'}\n"
        f"compute: fake\nlisten: {{host: 127.0.0.1, port: {port}, insecure: true}}\n"
        f"heartbeat_seconds: 2\nfake: {{cpu: {cpu}, volume_pool_bytes: {volume_pool}, "
        f"volume_backends: [{', '.join(backends)}]}}\n"
        f"network: {json.dumps(network)}\n"
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
            **spec,
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(hypervisor))
    return agent


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


class ImageServer(http.server.ThreadingHTTPServer):
    """Answers HEAD and GET for any path with a few bytes: enough for an Image to be Ready
    on the operator's probe (fake agents download nothing). Paths with "missing" get 404."""

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str = "img.qcow2") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    body = b"not really a disk"

    def do_HEAD(self) -> None:
        if "missing" in self.path:  # for Images whose source is not there (yet)
            self.send_response(404, "secret-looking reason phrase")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()

    def do_GET(self) -> None:
        self.do_HEAD()
        if "missing" not in self.path:
            self.wfile.write(self.body)

    def log_message(self, *_: Any) -> None:
        return None


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    server = ImageServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


MakeOperator = Callable[..., Operator]


@pytest.fixture
def make_operator(
    cluster: Cluster, namespace: str, tmp_path: Path, image_server: ImageServer
) -> Iterator[MakeOperator]:
    """Operators watching the test's namespace (not started yet): `make_operator(name,
    *extra_args, env=...)` logs to NAME.log. All are stopped at the end, and the
    namespace's objects lose their finalizers so the namespace can go."""
    made: list[Operator] = []

    def make(name: str = "operator", *extra: str, env: dict[str, str] | None = None) -> Operator:
        # The test image server is on loopback, which the source policy refuses unless
        # allowed.
        running = Operator(
            tmp_path / f"{name}.log",
            [*STRATUS, "operator", "--namespace", namespace,
             "--allow-image-endpoint", f"127.0.0.1:{image_server.port}", *extra],
            {**cluster.env, "PYTHONUNBUFFERED": "1", **(env or {})},
        )  # fmt: skip
        made.append(running)
        return running

    try:
        yield make
    finally:
        for running in made:
            running.stop()
        for kind in ("instances", "images", "networks"):
            cluster.kubectl("-n", namespace, "patch", kind, "--all", "--type=merge",
                            "-p", '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip


@pytest.fixture
def operator(make_operator: MakeOperator) -> Operator:
    running = make_operator()
    running.start()
    return running
