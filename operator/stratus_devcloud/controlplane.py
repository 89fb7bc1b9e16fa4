"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

Everything lives in one state directory: pki/, etcd/ (the data, kept across down/up),
logs/, run/ (one record per started process, see processes.py), bin/ (kubectl and helm),
ports.json and kubeconfig. Stopping and asking use only the records, never the binaries.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from stratus_devcloud import kubeconfig, pki, processes
from stratus_devcloud.processes import Daemon

READY_TIMEOUT_SECONDS = 90.0
SERVICE_CIDR = "10.96.0.0/24"
CONTROLLERS = (
    # What a cluster without nodes still needs: ownerReference garbage collection and
    # namespace deletion, plus the service-account plumbing namespaces get.
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    # What the kubelet node's workloads need (idle without one): Deployments, DaemonSets
    # and Jobs (Helm hooks), Services' EndpointSlices, and node lifecycle (without it a new
    # node's not-ready taint never leaves and its pods stay Pending).
    "deployment-controller",
    "replicaset-controller",
    "daemonset-controller",
    "job-controller",
    "endpointslice-controller",
    "node-lifecycle-controller",
    "pod-garbage-collector-controller",
    "ttl-controller",
)
REPO_ROOT = Path(__file__).resolve().parents[2]
# In start order.
DAEMON_NAMES = ("etcd", "kube-apiserver", "kube-controller-manager")
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts:stratus-system"]
  - level: None
"""


class KubectlRunner(Protocol):
    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]: ...


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached."""


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "stratus" / "dev"


def kube_bin_dir() -> Path:
    """Directory with etcd, kube-apiserver, kube-controller-manager, kubectl and helm.

    `STRATUS_KUBE_BIN_DIR` names existing release binaries; otherwise hack/kube/build.sh
    builds them once into a per-user cache (it honours the same variable).
    """
    script = REPO_ROOT / "hack" / "kube" / "build.sh"
    if not script.exists() and not os.environ.get("STRATUS_KUBE_BIN_DIR"):
        raise ControlPlaneError(
            f"{script} not found: run from a Stratus checkout or set STRATUS_KUBE_BIN_DIR"
        )
    if not script.exists():
        return Path(os.environ["STRATUS_KUBE_BIN_DIR"])
    result = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise ControlPlaneError(f"{script} failed (exit {result.returncode}); see its output")
    return Path(result.stdout.strip().splitlines()[-1])


# Ports this process has handed out: a cloud's ports are all chosen before its services
# bind them, and the kernel may offer a port it offered a moment ago (an agent and the
# console proxy once got the same one, and the operator could not start).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now, and that this process has
    not handed out before."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def kept_port(port_file: Path) -> int:
    """A port chosen at first use (free_port) and kept in `port_file`, so a cloud's
    services keep their addresses across down and up."""
    if not port_file.exists():
        port_file.parent.mkdir(parents=True, exist_ok=True)
        port_file.write_text(str(free_port()))
    return int(port_file.read_text())


@dataclass(frozen=True)
class Ports:
    apiserver: int
    etcd_client: int
    etcd_peer: int

    @classmethod
    def load_or_pick(cls, path: Path) -> Ports:
        """Ports chosen at first start and kept, so the kubeconfig stays valid."""
        if path.exists():
            return cls(**json.loads(path.read_text()))
        ports = cls(free_port(), free_port(), free_port())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(ports)) + "\n")
        return ports


class LocalControlPlane:
    def __init__(self, state_dir: Path, bin_dir: Path | None = None) -> None:
        self.state_dir = state_dir.resolve()
        self._bin_dir = bin_dir

    # -- layout ---------------------------------------------------------------------------
    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def user_bin_dir(self) -> Path:
        return self.state_dir / "bin"

    @property
    def kubectl(self) -> Path:
        return self.user_bin_dir / "kubectl"

    @property
    def server_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def ports(self) -> Ports:
        return Ports.load_or_pick(self.state_dir / "ports.json")

    @property
    def audit_policy(self) -> Path:
        return self.state_dir / "audit-policy.yaml"

    @property
    def audit_log(self) -> Path:
        """Every request of a ServiceAccount of stratus-system (the chart's operator and
        agents), with its verb, resource and answer (JSON lines, metadata only: never a
        body, so no Secret's data)."""
        return self.state_dir / "logs" / "audit.log"

    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = kube_bin_dir()
        return self._bin_dir

    def daemons(self) -> list[Daemon]:
        """In start order; stop in reverse."""
        bins, p, ports = self.bin_dir(), self.pki_dir, self.ports
        run, logs = self.run_dir, self.state_dir / "logs"
        etcd_url = f"https://127.0.0.1:{ports.etcd_client}"
        peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
        etcd = (
            str(bins / "etcd"),
            "--name=stratus-dev",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=stratus-dev={peer_url}",
            f"--cert-file={p / 'etcd-server.crt'}",
            f"--key-file={p / 'etcd-server.key'}",
            f"--trusted-ca-file={p / 'ca.crt'}",
            "--client-cert-auth=true",
            "--log-level=warn",
        )
        apiserver = (
            str(bins / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--etcd-cafile={p / 'ca.crt'}",
            f"--etcd-certfile={p / 'apiserver-etcd-client.crt'}",
            f"--etcd-keyfile={p / 'apiserver-etcd-client.key'}",
            # Every address, so the kubelet node's pods reach it at the node address
            # (192.0.2.1): there is no kube-proxy for the kubernetes Service. Anonymous
            # requests are refused; every client needs a certificate or token of this CA.
            "--bind-address=0.0.0.0",
            # The `kubernetes` Service's endpoint: pods reach it through kube-proxy there.
            f"--advertise-address={pki.NODE_IP}",
            f"--secure-port={ports.apiserver}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            "--anonymous-auth=false",
            "--authorization-mode=RBAC",
            # The kubelet node: its privileged DaemonSet pods, and kubectl logs/exec.
            "--allow-privileged=true",
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={p / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--profiling=false",
            # Who of stratus-system called what, and the answer: the RBAC tests read it.
            f"--audit-policy-file={self.audit_policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxsize=100",
            "--audit-log-maxbackup=1",
        )
        controller_manager = (
            str(bins / "kube-controller-manager"),
            f"--kubeconfig={self.state_dir / 'controller-manager.kubeconfig'}",
            f"--controllers={','.join(CONTROLLERS)}",
            "--leader-elect=false",
            # Each controller acts as its own service account, with the roles RBAC bootstraps.
            "--use-service-account-credentials=true",
            "--secure-port=0",
            f"--service-account-private-key-file={p / 'sa.key'}",
            f"--root-ca-file={p / 'ca.crt'}",
        )
        argvs = (etcd, apiserver, controller_manager)
        return [
            Daemon(name, argv, run, logs) for name, argv in zip(DAEMON_NAMES, argvs, strict=True)
        ]

    # -- lifecycle ------------------------------------------------------------------------
    def prepare(self) -> None:
        """Certificates, kubeconfigs and bin/ links; keeps whatever already exists."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        pki.ensure_pki(self.pki_dir)
        self.audit_policy.write_text(AUDIT_POLICY)
        common = {"server": self.server_url, "ca": self.pki_dir / "ca.crt"}
        kubeconfig.write_kubeconfig(
            self.kubeconfig,
            cert=self.pki_dir / "admin.crt",
            key=self.pki_dir / "admin.key",
            user="stratus-admin",
            context="stratus-dev",
            **common,  # type: ignore[arg-type]
        )
        kubeconfig.write_kubeconfig(
            self.state_dir / "controller-manager.kubeconfig",
            cert=self.pki_dir / "controller-manager.crt",
            key=self.pki_dir / "controller-manager.key",
            user="system:kube-controller-manager",
            context="stratus-dev",
            **common,  # type: ignore[arg-type]
        )
        self.user_bin_dir.mkdir(exist_ok=True)
        # kubectl, helm and the `kubectl stratus` plugin (installed beside this interpreter).
        plugin = Path(sys.executable).parent / "kubectl-stratus"
        tools = {"kubectl": self.bin_dir() / "kubectl", "helm": self.bin_dir() / "helm",
                 "kubectl-stratus": plugin}  # fmt: skip
        for tool, target in tools.items():
            link = self.user_bin_dir / tool
            if not link.is_symlink() or link.readlink() != target:
                link.unlink(missing_ok=True)
                link.symlink_to(target)

    def up(self, crd_dir: Path | None = None) -> None:
        """Start what is not running, wait for /readyz, apply and establish the CRDs."""
        self.prepare()
        started = [daemon for daemon in self.daemons() if not daemon.running()]
        for daemon in started:
            daemon.start()
        try:
            self.wait_ready()
            if crd_dir is not None:
                self.apply_crds(crd_dir)
        except ControlPlaneError:
            # Leave nothing half-started behind; the logs stay for the error message.
            for daemon in reversed(started):
                daemon.stop()
            raise

    def down(self) -> list[str]:
        """Stop every daemon `up` recorded; return the names of those that were running."""
        return self.stop().stopped

    def stop(self) -> processes.StopReport:
        return processes.stop_all(self.run_dir, DAEMON_NAMES)

    def running(self) -> list[str]:
        return [name for name in DAEMON_NAMES if processes.Tracked(name, self.run_dir).running()]

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        context.load_cert_chain(self.pki_dir / "admin.crt", self.pki_dir / "admin.key")
        return context

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"{self.server_url}/readyz", context=self.ssl_context(), timeout=5
            ) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        logs = self.state_dir / "logs"
        failure = f"kube-apiserver not ready after {timeout:.0f} s; see {logs}"
        wait_for(self.ready, self.daemons(), timeout, failure)

    def kubectl_run(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
        )

    def apply_crds(self, crd_dir: Path) -> None:
        apply_and_establish_crds(lambda *args: self.kubectl_run(*args, check=False), crd_dir)


def wait_for(
    done: Callable[[], bool], daemons: Iterable[Daemon], timeout: float, failure: str
) -> None:
    """Poll `done` until it holds; ControlPlaneError with the log's tail as soon as one of
    `daemons` exited, or `failure` after `timeout` seconds."""
    watched = list(daemons)
    deadline = time.monotonic() + timeout
    while not done():
        for daemon in watched:
            if not daemon.running():
                raise ControlPlaneError(
                    f"{daemon.name} exited; last lines of {daemon.log_file}:\n{daemon.log_tail()}"
                )
        if time.monotonic() > deadline:
            raise ControlPlaneError(failure)
        time.sleep(0.2)


def apply_and_establish_crds(
    kubectl: KubectlRunner, crd_dir: Path, timeout_seconds: int = 60
) -> None:
    """Server-side apply every CRD in `crd_dir` and wait until each is Established."""
    applied = kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=stratus",
        "-f",
        str(crd_dir),
        "-o",
        "name",
    )
    if applied.returncode != 0:
        raise ControlPlaneError(f"applying {crd_dir} failed: {applied.stderr.strip()}")
    names = applied.stdout.split()
    waited = kubectl("wait", "--for=condition=Established", f"--timeout={timeout_seconds}s", *names)
    if waited.returncode != 0:
        raise ControlPlaneError(f"CRDs not Established: {waited.stderr.strip()}")
