"""The all-in-one local cloud: control plane, node services, one agent, the operator.

`up` starts what is missing and registers the node; `down` deletes every guest, bridge and
node-side file and stops what `up` started. Kubernetes data (etcd) stays in the state
directory, so Instances come back on the next `up`: the operator finds their guests missing
on the node and dispatches them again (with fresh disks).
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

from stratus_api import naming
from stratus_devcloud.controlplane import (
    REPO_ROOT,
    ControlPlaneError,
    LocalControlPlane,
    free_port,
)
from stratus_devcloud.nodeservices import LIBVIRT_URI, NodeServices
from stratus_devcloud.processes import Daemon

NODE_NAME = "local"
BRIDGE = "br-stratus"
IMAGE_PORT = 8480  # examples/image.yaml points here
AGENT_SYSTEM_NAMESPACE = "stratus-system"
# QEMU runs as libvirt-qemu: the node's files must sit under world-traversable directories,
# which neither /tmp/pytest-* nor /root is. One directory per state dir, named from it.
NODE_ROOT = Path("/var/lib/stratus")
READY_TIMEOUT_SECONDS = 60.0
# Seconds `down` keeps sweeping for guests whose start was already under way.
DOWN_SETTLE_SECONDS = 90.0


class DevCloud:
    def __init__(self, state_dir: Path) -> None:
        self.plane = LocalControlPlane(state_dir)
        self.state_dir = self.plane.state_dir
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:10]
        self.node_dir = NODE_ROOT / f"dev-{digest}"
        self.node = NodeServices(self.state_dir)
        run, logs = self.state_dir / "run", self.state_dir / "logs"
        self.agent_config = self.state_dir / "agent" / "agent.yaml"
        python = sys.executable
        self.image_server = Daemon(
            "image-server",
            (python, "-m", "http.server", str(IMAGE_PORT), "--bind", "127.0.0.1",
             "--directory", str(self.node_dir / "served")),
            run, logs, exe=str(self.node_dir / "served"),
        )  # fmt: skip
        self.agent = Daemon(
            "stratus-agent",
            (python, "-m", "stratus_cli", "agent", "--config", str(self.agent_config)),
            run, logs, exe=str(self.agent_config),
        )  # fmt: skip
        self.operator = Daemon(
            "stratus-operator",
            (python, "-m", "stratus_cli", "operator", "--kubeconfig", str(self.plane.kubeconfig)),
            run, logs, exe=str(self.plane.kubeconfig),
        )  # fmt: skip

    # -- up -------------------------------------------------------------------------------
    def up(self) -> None:
        self.plane.up(crd_dir=REPO_ROOT / "crds")
        self.node.up()
        self._serve_test_image()
        self._start_agent()
        self._register_node()
        self.operator.start()

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

    def _start_agent(self) -> None:
        agent_dir = self.agent_config.parent
        agent_dir.mkdir(parents=True, exist_ok=True)
        token = agent_dir / "token"
        if not token.exists():
            token.write_text(secrets.token_urlsafe(32))
            token.chmod(0o600)
        port_file = agent_dir / "port"
        if not port_file.exists():
            port_file.write_text(str(free_port()))
        self.agent_port = int(port_file.read_text())
        pki = self.plane.pki_dir
        self.agent_config.write_text(
            json.dumps(
                {
                    "node_name": NODE_NAME,
                    "token_file": str(token),
                    "state_dir": str(self.node_dir / "agent"),
                    "compute": "libvirt",
                    "libvirt_uri": LIBVIRT_URI,
                    "listen": {
                        "host": "127.0.0.1",
                        "port": self.agent_port,
                        "tls_cert_file": str(pki / "agent.crt"),
                        "tls_key_file": str(pki / "agent.key"),
                    },
                    "network": {"bridge": BRIDGE, "datapath_type": "netdev"},
                },
                indent=2,
            )
        )
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
    def down(self) -> list[str]:
        stopped = [d.name for d in (self.operator, self.agent, self.image_server) if d.stop()]
        self._remove_node_state()
        stopped += self.node.down()
        stopped += self.plane.down()
        return stopped

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
        if self.node.ovs_running():
            subprocess.run(["ovs-vsctl", "--timeout=10", "--if-exists", "del-br", BRIDGE],
                           capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(self.node_dir, ignore_errors=True)

    def _remove_domains(self) -> int:
        listed = subprocess.run(
            ["virsh", "-c", LIBVIRT_URI, "list", "--all", "--name"],
            capture_output=True, text=True, check=False,
        ).stdout.split()  # fmt: skip
        ours = [domain for domain in listed if self._ours(domain)]
        for domain in ours:
            subprocess.run(["virsh", "-c", LIBVIRT_URI, "destroy", domain],
                           capture_output=True, check=False)  # fmt: skip
            subprocess.run(["virsh", "-c", LIBVIRT_URI, "undefine", "--nvram", domain],
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
            ["virsh", "-c", LIBVIRT_URI, "dumpxml", domain],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        return str(self.node_dir) in xml

    def running(self) -> list[str]:
        daemons = [self.image_server, self.agent, self.operator]
        return self.plane.running() + [d.name for d in daemons if d.running()]
