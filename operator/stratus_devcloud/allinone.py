"""The all-in-one local cloud: control plane, node services, one agent, the operator.

`up` starts what is missing and registers the node; `down` deletes every guest, bridge and
node-side file and stops what `up` started. Kubernetes data (etcd) stays in the state
directory, so Instances come back on the next `up`: the operator finds their guests missing
on the node and dispatches them again (with fresh disks).

Several local clouds can share a machine: the node directory and the OVS bridge are named
after the state directory (and written to STATE/node.json at `up`), guests are ours when
their disks live in our node directory, and `down` uses only STATE/node.json and the process
records in STATE/run, never the environment `up` ran in.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from stratus_api import naming
from stratus_api.v1alpha1.cephpool import DEFAULT_POOL
from stratus_devcloud import ceph, processes
from stratus_devcloud.controlplane import (
    DAEMON_NAMES,
    REPO_ROOT,
    ControlPlaneError,
    LocalControlPlane,
    free_port,
)
from stratus_devcloud.nodeservices import (
    LIBVIRT_NAMES,
    LIBVIRT_URI,
    OVS_NAMES,
    NodeServices,
    tool,
)
from stratus_devcloud.processes import Daemon

NODE_NAME = "local"
# The bridge every local cloud shared before bridges were named per state directory; no
# longer used (see DevCloud.bridge). Kept for callers that import it.
BRIDGE = "br-stratus"
BRIDGE_PREFIX = "stratus-"  # plus 7 hex digits: 15 characters, Linux's interface name limit
IMAGE_PORT = 8480  # examples/image.yaml points here
IMAGE_ENDPOINT = f"127.0.0.1:{IMAGE_PORT}"
AGENT_SYSTEM_NAMESPACE = "stratus-system"
# One directory per state dir, named from it (see DevCloud.node_dir).
NODE_ROOT = Path("/var/lib/stratus")
READY_TIMEOUT_SECONDS = 60.0
# Seconds `down` keeps sweeping for guests whose start was already under way.
DOWN_SETTLE_SECONDS = 90.0


APP_NAMES = ("image-server", "stratus-agent", "stratus-operator")  # in start order


class DevCloud:
    def __init__(self, state_dir: Path) -> None:
        self.plane = LocalControlPlane(state_dir)
        self.state_dir = self.plane.state_dir
        self.digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()
        self.node = NodeServices(self.state_dir)
        # Started only when asked (`stratus dev up --ceph`); nothing uses it yet.
        self.ceph = ceph.LocalCeph(self.state_dir)
        self.run_dir, self.log_dir = self.state_dir / "run", self.state_dir / "logs"
        self.agent_config = self.state_dir / "agent" / "agent.yaml"
        self.node_record = self.state_dir / "node.json"
        python = sys.executable
        self.image_server = Daemon(
            "image-server",
            (python, "-m", "http.server", str(IMAGE_PORT), "--bind", "127.0.0.1",
             "--directory", str(self.node_dir / "served")),
            self.run_dir, self.log_dir,
        )  # fmt: skip
        self.agent = Daemon(
            "stratus-agent",
            (python, "-m", "stratus_cli", "agent", "--config", str(self.agent_config)),
            self.run_dir, self.log_dir,
        )  # fmt: skip

    # -- node-side names, per state directory ---------------------------------------------
    def _recorded_node(self) -> dict[str, str]:
        try:
            found: dict[str, str] = json.loads(self.node_record.read_text())
            return found
        except (OSError, ValueError):
            return {}

    @property
    def node_dir(self) -> Path:
        """QEMU runs as libvirt-qemu: the node's files sit under world-traversable
        directories, which neither /tmp/pytest-* nor /root is."""
        recorded = self._recorded_node().get("node_dir")
        return Path(recorded) if recorded else NODE_ROOT / f"dev-{self.digest[:10]}"

    @property
    def bridge(self) -> str:
        return self._recorded_node().get("bridge") or BRIDGE_PREFIX + self.digest[:7]

    def _record_node(self) -> None:
        node = {"bridge": self.bridge, "node_dir": str(self.node_dir)}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.node_record.write_text(json.dumps(node, indent=2) + "\n")

    # -- ports ----------------------------------------------------------------------------
    @property
    def agent_port(self) -> int:
        """Chosen at first start and kept, like the control plane's (ports.json)."""
        port_file = self.agent_config.parent / "port"
        if not port_file.exists():
            port_file.parent.mkdir(parents=True, exist_ok=True)
            port_file.write_text(str(free_port()))
        return int(port_file.read_text())

    def service_ports(self) -> list[int]:
        """This cloud's own service ports: no Image may be downloaded from them."""
        ports = self.plane.ports
        return [ports.etcd_client, ports.etcd_peer, ports.apiserver, self.agent_port]

    @property
    def operator(self) -> Daemon:
        image_policy = ["--allow-image-endpoint", IMAGE_ENDPOINT]
        for port in self.service_ports():
            image_policy += ["--refuse-image-port", str(port)]
        return Daemon(
            "stratus-operator",
            (sys.executable, "-m", "stratus_cli", "operator",
             "--kubeconfig", str(self.plane.kubeconfig), *image_policy),
            self.run_dir, self.log_dir,
        )  # fmt: skip

    # -- up -------------------------------------------------------------------------------
    def up(self) -> None:
        self.plane.up(crd_dir=REPO_ROOT / "crds")
        self._record_node()
        self.node.up()
        self._serve_test_image()
        self._start_agent()
        self._register_node()
        self.operator.start()

    def up_ceph(self) -> ceph.CephCluster:
        """The one-node Ceph cluster of this state directory (STATE/ceph), made on first use
        and kept across down/up like the Kubernetes data, registered as the CephPool
        "default" (its key in a Secret of stratus-system)."""
        cluster = self.ceph.up()
        secret_name = f"ceph-client-{cluster.user}"
        manifests = {
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": AGENT_SYSTEM_NAMESPACE}},
                {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                 "metadata": {"name": secret_name, "namespace": AGENT_SYSTEM_NAMESPACE},
                 "stringData": {"key": cluster.key}},
                {"apiVersion": "stratus.io/v1alpha1", "kind": "CephPool",
                 "metadata": {"name": DEFAULT_POOL},
                 "spec": {"monitors": [cluster.monitors], "pool": cluster.pool,
                          "user": cluster.user,
                          "keySecretRef": {"namespace": AGENT_SYSTEM_NAMESPACE,
                                           "name": secret_name}}},
            ],
        }  # fmt: skip
        # Through stdin: the key never appears on a command line.
        result = self.plane.kubectl_run(
            "apply", "--server-side", "--force-conflicts", "--field-manager=stratus-dev", "-f", "-",
            input=json.dumps(manifests), check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise ControlPlaneError(f"registering the Ceph pool failed: {result.stderr.strip()}")
        return cluster

    def _serve_test_image(self) -> None:
        served = self.node_dir / "served"
        served.mkdir(parents=True, exist_ok=True)
        for directory in (NODE_ROOT, self.node_dir, served):
            directory.chmod(0o755)
        built = subprocess.run(
            ["bash", str(REPO_ROOT / "hack" / "build-test-image")],
            stdout=subprocess.PIPE, text=True, check=False,
        )  # fmt: skip
        if built.returncode != 0:
            raise ControlPlaneError("hack/build-test-image failed; see its output above")
        image = Path(built.stdout.strip().splitlines()[-1])
        target = served / "stratus-test.qcow2"
        if not target.exists() or target.read_bytes() != image.read_bytes():
            shutil.copyfile(image, target)
        target.chmod(0o644)
        self.image_server.start()

    def agent_settings(self) -> dict[str, Any]:
        """The agent's configuration (stratus_agent.config.AgentConfig, as YAML/JSON)."""
        pki = self.plane.pki_dir
        return {
            "node_name": NODE_NAME,
            "token_file": str(self.agent_config.parent / "token"),
            "state_dir": str(self.node_dir / "agent"),
            "compute": "libvirt",
            "libvirt_uri": LIBVIRT_URI,
            "listen": {
                "host": "127.0.0.1",
                "port": self.agent_port,
                # Explicit whatever the agent's default: the token and guest specs travel
                # over TLS only.
                "insecure": False,
                "tls_cert_file": str(pki / "agent.crt"),
                "tls_key_file": str(pki / "agent.key"),
            },
            "network": {"bridge": self.bridge, "datapath_type": "netdev"},
            # Loopback is refused by default: this cloud's image server is the one exception,
            # and none of its own service ports may ever serve an image.
            "images": {
                "sources": {
                    "allowed_endpoints": [IMAGE_ENDPOINT],
                    "refused_ports": self.service_ports(),
                }
            },
        }

    def _start_agent(self) -> None:
        agent_dir = self.agent_config.parent
        agent_dir.mkdir(parents=True, exist_ok=True)
        token = agent_dir / "token"
        if not token.exists():
            token.write_text(secrets.token_urlsafe(32))
            token.chmod(0o600)
        self.agent_config.write_text(json.dumps(self.agent_settings(), indent=2) + "\n")
        self.agent.start()
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._agent_answers():
                return
            if not self.agent.running():
                log, tail = self.agent.log_file, self.agent.log_tail()
                raise ControlPlaneError(f"the agent exited; last lines of {log}:\n{tail}")
            time.sleep(0.2)
        raise ControlPlaneError(f"the agent did not answer; see {self.agent.log_file}")

    def _agent_answers(self) -> bool:
        token = (self.agent_config.parent / "token").read_text().strip()
        request = urllib.request.Request(
            f"https://127.0.0.1:{self.agent_port}/healthz",
            headers={"Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(request, context=self.plane.ssl_context(), timeout=5):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def _register_node(self) -> None:
        token = (self.agent_config.parent / "token").read_text().strip()
        ca = (self.plane.pki_dir / "ca.crt").read_text()
        secret_name = f"agent-{NODE_NAME}"
        manifests = {
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": AGENT_SYSTEM_NAMESPACE}},
                {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                 "metadata": {"name": secret_name, "namespace": AGENT_SYSTEM_NAMESPACE},
                 "stringData": {"token": token, "ca.crt": ca}},
                {"apiVersion": "stratus.io/v1alpha1", "kind": "Hypervisor",
                 "metadata": {"name": NODE_NAME},
                 "spec": {"endpoint": f"https://127.0.0.1:{self.agent_port}",
                          "tokenSecretRef": {"namespace": AGENT_SYSTEM_NAMESPACE,
                                             "name": secret_name}}},
            ],
        }  # fmt: skip
        result = self.plane.kubectl_run(
            "apply", "--server-side", "--force-conflicts", "--field-manager=stratus-dev", "-f", "-",
            input=json.dumps(manifests), check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise ControlPlaneError(f"registering the node failed: {result.stderr.strip()}")

    # -- down -----------------------------------------------------------------------------
    def down(self) -> processes.StopReport:
        """Stop what the records in STATE/run prove ours, remove this cloud's guests, bridge
        and node files; leave everything else, and say what was left and why."""
        report = processes.stop_all(self.run_dir, APP_NAMES)
        self._remove_node_state()
        report.add(self.ceph.down())
        report.add(self.node.stop())
        report.add(self.plane.stop())
        # Records of names this version does not know; OVS and libvirtd, which node.stop()
        # may have left running on purpose, are not among them.
        known = {*APP_NAMES, *ceph.DAEMON_NAMES, *OVS_NAMES, *LIBVIRT_NAMES, *DAEMON_NAMES}
        unknown = tuple(r.name for r in processes.recorded(self.run_dir) if r.name not in known)
        if unknown:
            report.add(processes.stop_all(self.run_dir, unknown))
        for pid_file in sorted(self.run_dir.glob("*.pid")):
            pid = pid_file.read_text().strip()
            report.notes.append(
                f"{pid_file.stem}: pid {pid} from an older stratus, with no record proving "
                "it ours; not stopped"
            )
            pid_file.unlink()
        return report

    def _remove_node_state(self) -> None:
        """Every guest, the bridge and the node's files; needs the node services running.

        A domain start the agent had sent just before it stopped still completes inside
        libvirtd, so guests are removed until a pass finds none twice in a row.
        """
        if self.node.libvirt_running():
            deadline, quiet = time.monotonic() + DOWN_SETTLE_SECONDS, 0
            while quiet < 2 and time.monotonic() < deadline:
                removed = self._remove_domains()
                quiet = 0 if removed else quiet + 1
                time.sleep(0 if removed else 1.0)
        recorded = self._recorded_node()
        if "bridge" in recorded and self.node.ovs_running():
            subprocess.run([tool("ovs-vsctl"), "--timeout=10", "--if-exists", "del-br",
                            recorded["bridge"]], capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(self.node_dir, ignore_errors=True)

    def _remove_domains(self) -> int:
        listed = subprocess.run(
            [tool("virsh"), "-c", LIBVIRT_URI, "list", "--all", "--name"],
            capture_output=True, text=True, check=False,
        ).stdout.split()  # fmt: skip
        ours = [domain for domain in listed if self._ours(domain)]
        for domain in ours:
            subprocess.run([tool("virsh"), "-c", LIBVIRT_URI, "destroy", domain],
                           capture_output=True, check=False)  # fmt: skip
            subprocess.run([tool("virsh"), "-c", LIBVIRT_URI, "undefine", "--nvram", domain],
                           capture_output=True, check=False)  # fmt: skip
        return len(ours)

    def console_log(self, namespace: str, name: str) -> str:
        """The serial console log of an Instance running on this node."""
        got = self.plane.kubectl_run(
            "get", "instance", name, "-n", namespace, "-o", "jsonpath={.metadata.uid}",
            check=False,
        )  # fmt: skip
        if got.returncode != 0:
            raise ControlPlaneError(got.stderr.strip())
        log = self.node_dir / "agent" / "guests" / naming.console_log_file(got.stdout.strip())
        if not log.exists():
            raise ControlPlaneError(f"no console log yet for {namespace}/{name} ({log})")
        return log.read_text(errors="replace")

    def _ours(self, domain: str) -> bool:
        """A Stratus domain whose disks live in this cloud's node directory."""
        if not domain.startswith("stratus-"):
            return False
        xml = subprocess.run(
            [tool("virsh"), "-c", LIBVIRT_URI, "dumpxml", domain],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        return str(self.node_dir) in xml

    def running(self) -> list[str]:
        """Names of the processes of ours that run, by their records, in start order."""
        return [
            record.name
            for record in processes.recorded(self.run_dir)
            if processes.Tracked(record.name, self.run_dir).running()
        ]
