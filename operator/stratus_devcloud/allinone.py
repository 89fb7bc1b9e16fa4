"""The all-in-one local cloud: control plane, node services, one agent, the operator.

`up` starts what is missing and registers the node; `down` deletes every guest, bridge and
node-side file and stops what `up` started. Kubernetes data (etcd) stays in the state
directory, so Instances come back on the next `up`: the operator finds their guests missing
on the node and dispatches them again (with fresh disks).

Several local clouds can share a machine: the node directory, the OVS bridges and the
external network's range are named after the state directory (and written to STATE/node.json
at `up`; see external.py for the external network), guests are ours when
their disks live in our node directory, and `down` uses only STATE/node.json and the process
records in STATE/run, never the environment `up` ran in.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stratus_agent.drivers.network.dhcp import DhcpServers
from stratus_agent.drivers.network.routers import Routers
from stratus_api import naming
from stratus_api.v1alpha1.cephpool import DEFAULT_POOL
from stratus_devcloud import ceph, external, kubeconfig, kubeletnode, monitoring, processes
from stratus_devcloud.controlplane import (
    DAEMON_NAMES,
    REPO_ROOT,
    ControlPlaneError,
    LocalControlPlane,
    kept_port,
)
from stratus_devcloud.nodeservices import (
    LIBVIRT_NAMES,
    LIBVIRT_URI,
    OVS_NAMES,
    NodeServices,
    tool,
)
from stratus_devcloud.processes import Daemon
from stratus_devcloud.simnodes import SimNodes

NODE_NAME = "local"  # node 1; node K is local-K
HOSTNAME_LABEL = "kubernetes.io/hostname"  # on each Hypervisor: nodeSelector picks a node
# The bridge every local cloud shared before bridges were named per state directory; no
# longer used (see DevCloud.bridge). Kept for callers that import it.
BRIDGE = "br-stratus"
BRIDGE_PREFIX = "stratus-"  # plus 7 hex digits: 15 characters, Linux's interface name limit
IMAGE_PORT = 8480  # examples/image.yaml points here
IMAGE_ENDPOINT = f"127.0.0.1:{IMAGE_PORT}"
AGENT_SYSTEM_NAMESPACE = "stratus-system"
CHART = REPO_ROOT / "charts" / "stratus"
OPERATOR_ACCOUNT = "stratus-operator"  # the chart's, for a release named stratus
DEVELOPER = "developer"  # a ServiceAccount admin of `default`: a token for the consoles
# One directory per state dir, named from it (see DevCloud.node_dir).
NODE_ROOT = Path("/var/lib/stratus")
READY_TIMEOUT_SECONDS = 60.0
# Seconds `down` keeps sweeping for guests whose start was already under way.
DOWN_SETTLE_SECONDS = 90.0


APP_NAMES = ("image-server", "stratus-agent", "stratus-operator", monitoring.DAEMON_NAME)
MAX_NODES = 9  # node K's bridge is "stratusK-" plus 6 hex digits: 15 characters
# Each simulated node's guests get QEMU users from a range of their own: two nodes sharing
# one kernel must never give two guests the same UID.
NODE_UID_FIRST, NODE_UID_COUNT = 1_900_000_000, 65_536


@dataclass(frozen=True)
class NodeSlot:
    """One node of the local cloud: its agent, its bridge and its files. Node 1 keeps the
    names a one-node cloud always had."""

    index: int  # from 1
    name: str
    bridge: str
    config_dir: Path  # STATE/agent[-K]: config, token, port
    state_dir: Path  # the agent's state directory, under the node directory

    @property
    def daemon_name(self) -> str:
        return "stratus-agent" if self.index == 1 else f"stratus-agent-{self.index}"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "agent.yaml"

    @property
    def token(self) -> str:
        return (self.config_dir / "token").read_text().strip()


class DevCloud:
    def __init__(self, state_dir: Path, nodes: int | None = None) -> None:
        """`nodes`: how many nodes `up` makes (default: as recorded at the last `up`, else
        one). Every node has an agent and a bridge of its own; with more than one, each also
        has a tunnel endpoint of its own (simnodes.py) for the overlay between them."""
        if nodes is not None and not 1 <= nodes <= MAX_NODES:
            raise ControlPlaneError(f"--nodes: from 1 to {MAX_NODES}, not {nodes}")
        self._nodes_wanted = nodes
        self.plane = LocalControlPlane(state_dir)
        self.state_dir = self.plane.state_dir
        self.digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()
        self.node = NodeServices(self.state_dir)
        self.simnodes = SimNodes(self.state_dir)
        # Started only when asked (`stratus dev up --ceph`); nothing uses it yet.
        self.ceph = ceph.LocalCeph(self.state_dir)
        # Started only when asked (`stratus dev up --kubelet`): a real node for pods.
        self.kubelet = kubeletnode.KubeletNode(self.plane)
        self.run_dir, self.log_dir = self.state_dir / "run", self.state_dir / "logs"
        self.node_record = self.state_dir / "node.json"
        self.image_server = self.image_server_on("127.0.0.1")
        self.prometheus = monitoring.LocalPrometheus(self.state_dir, self.run_dir, self.log_dir)

    def image_server_on(self, host: str) -> Daemon:
        """The test image's HTTP server, on `host`'s IMAGE_PORT."""
        return Daemon(
            "image-server",
            (sys.executable, "-m", "http.server", str(IMAGE_PORT), "--bind", host,
             "--directory", str(self.node_dir / "served")),
            self.run_dir, self.log_dir,
        )  # fmt: skip

    # -- node-side names, per state directory ---------------------------------------------
    def _recorded_node(self) -> dict[str, Any]:
        try:
            found: dict[str, Any] = json.loads(self.node_record.read_text())
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

    @property
    def external_bridge(self) -> str:
        """The external network's bridge (physical network `external` on every node)."""
        recorded = self._recorded_node().get("external", {})
        return str(recorded.get("bridge") or external.bridge_name(self.digest))

    @property
    def external_gateway(self) -> ipaddress.IPv4Interface:
        """The host's address on the external network, with its prefix."""
        recorded = self._recorded_node().get("external", {}).get("host_gateway")
        if recorded:
            return ipaddress.IPv4Interface(recorded)
        return external.gateway_for(self.state_dir, self.digest)

    @property
    def node_count(self) -> int:
        recorded = self._recorded_node().get("nodes", 1)
        return self._nodes_wanted or (recorded if isinstance(recorded, int) else 1)

    @property
    def nodes(self) -> list[NodeSlot]:
        return [self.node_slot(index) for index in range(1, self.node_count + 1)]

    def node_slot(self, index: int) -> NodeSlot:
        if index == 1:
            return NodeSlot(1, NODE_NAME, self.bridge, self.state_dir / "agent",
                            self.node_dir / "agent")  # fmt: skip
        name, bridge = f"{NODE_NAME}-{index}", f"stratus{index}-{self.digest[:6]}"
        return NodeSlot(index, name, bridge, self.state_dir / f"agent-{index}",
                        self.node_dir / f"agent-{index}")  # fmt: skip

    def agent_daemon(self, node: NodeSlot) -> Daemon:
        return Daemon(
            node.daemon_name,
            (sys.executable, "-m", "stratus_cli", "agent", "--config", str(node.config_file)),
            self.run_dir, self.log_dir,
        )  # fmt: skip

    @property
    def agent_config(self) -> Path:
        return self.node_slot(1).config_file

    def _record_node(self) -> None:
        node: dict[str, Any] = {
            "bridge": self.bridge,
            "node_dir": str(self.node_dir),
            "external": {
                "physical_network": external.PHYSICAL_NETWORK,
                "bridge": self.external_bridge,
                "host_gateway": str(self.external_gateway),
            },
        }
        if self.node_count > 1:
            node["nodes"] = self.node_count
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.node_record.write_text(json.dumps(node, indent=2) + "\n")

    # -- ports ----------------------------------------------------------------------------
    @property
    def agent_port(self) -> int:
        return self.port_of(self.node_slot(1))

    def port_of(self, node: NodeSlot) -> int:
        """Chosen at first start and kept, like the control plane's (ports.json)."""
        return kept_port(node.config_dir / "port")

    def service_ports(self) -> list[int]:
        """This cloud's own service ports: no Image may be downloaded from them."""
        ports = self.plane.ports
        agents = [self.port_of(node) for node in self.nodes]
        return [ports.etcd_client, ports.etcd_peer, ports.apiserver, *agents,
                self.operator_metrics_port, self.console_port, self.prometheus.port]  # fmt: skip

    @property
    def operator(self) -> Daemon:
        image_policy = ["--allow-image-endpoint", IMAGE_ENDPOINT]
        for port in self.service_ports():
            image_policy += ["--refuse-image-port", str(port)]
        pki = self.plane.pki_dir
        metrics = ["--metrics-host", "127.0.0.1", "--metrics-port", str(self.operator_metrics_port),
                   "--console-host", "127.0.0.1", "--console-port", str(self.console_port),
                   "--tls-cert-file", str(pki / "operator.crt"),
                   "--tls-key-file", str(pki / "operator.key")]  # fmt: skip
        return Daemon(
            "stratus-operator",
            (sys.executable, "-m", "stratus_cli", "operator",
             "--kubeconfig", str(self.operator_kubeconfig), *image_policy, *metrics),
            self.run_dir, self.log_dir,
        )  # fmt: skip

    @property
    def operator_metrics_port(self) -> int:
        """Chosen at first start and kept, like the agents' ports."""
        return kept_port(self.state_dir / "operator-metrics-port")

    @property
    def console_port(self) -> int:
        """The console proxy's (the operator serves it)."""
        return kept_port(self.state_dir / "console-port")

    @property
    def console_url(self) -> str:
        return f"https://127.0.0.1:{self.console_port}"

    @property
    def operator_kubeconfig(self) -> Path:
        return self.state_dir / "operator.kubeconfig"

    def _operator_credentials(self) -> None:
        """The operator's rights are its chart's: the ServiceAccount and ClusterRole that
        charts/stratus installs (rendered as a release `stratus` without leader election or
        agents, which the all-in-one runs on the host), and a token of that account in
        the operator's kubeconfig. So what it is denied here, a chart install is too."""
        rendered = subprocess.run(
            [str(self.plane.bin_dir() / "helm"), "template", "stratus", str(CHART), "-n",
             AGENT_SYSTEM_NAMESPACE, "--set", "operator.leaderElection=false", "--set",
             "agent.enabled=false", "--show-only", "templates/operator-serviceaccount.yaml",
             "--show-only", "templates/operator-rbac.yaml",
             "--show-only", "templates/metrics-reader-rbac.yaml",
             "--show-only", "templates/user-roles.yaml"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if rendered.returncode != 0:
            raise ControlPlaneError(f"helm template of {CHART} failed: {rendered.stderr}")
        namespace = {"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": AGENT_SYSTEM_NAMESPACE}}  # fmt: skip
        self._apply("the operator's RBAC", json.dumps(namespace), rendered.stdout)
        kubeconfig.write_kubeconfig(
            self.operator_kubeconfig, server=self.plane.server_url,
            ca=self.plane.pki_dir / "ca.crt", token=self._token(OPERATOR_ACCOUNT, "the operator"),
            user=f"system:serviceaccount:{AGENT_SYSTEM_NAMESPACE}:{OPERATOR_ACCOUNT}",
            context="stratus-dev",
        )  # fmt: skip

    # -- up -------------------------------------------------------------------------------
    def up(self, *, with_prometheus: bool = True) -> None:
        self.up_node_services()
        self.serve_test_image()
        for node in self.nodes:
            tunnel = self._tunnel(node) if self.node_count > 1 else None
            self._start_agent(node, tunnel)
            self._register_node(node)
        self._operator_credentials()
        self._developer()
        self.operator.start()
        if with_prometheus:
            self.up_prometheus()

    def _developer(self) -> None:
        """The ServiceAccount `developer`, admin of the namespace default (so its Stratus
        objects and consoles, through the chart's aggregated roles): a user whose token the
        console proxy accepts (the admin kubeconfig holds a client certificate)."""
        account = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": DEVELOPER, "namespace": "default"},
        }
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": DEVELOPER, "namespace": "default"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "admin"},
            "subjects": [{"kind": "ServiceAccount", "name": DEVELOPER, "namespace": "default"}],
        }  # fmt: skip
        self._apply("the developer account", json.dumps(account), json.dumps(binding))

    def _apply(self, what: str, *manifests: str) -> None:
        for manifest in manifests:
            applied = self.plane.kubectl_run("apply", "-f", "-", input=manifest, check=False)
            if applied.returncode != 0:
                raise ControlPlaneError(f"{what}: {applied.stderr.strip()}")

    def _token(self, account: str, whose: str) -> str:
        """A year-long token of the ServiceAccount `account` of stratus-system."""
        made = self.plane.kubectl_run(
            "create", "token", account, "-n", AGENT_SYSTEM_NAMESPACE, "--duration=8760h",
            check=False,
        )  # fmt: skip
        if made.returncode != 0:
            raise ControlPlaneError(f"a token for {whose}: {made.stderr.strip()}")
        return made.stdout.strip()

    def up_prometheus(self) -> None:
        """Prometheus scraping the operator (as the ServiceAccount stratus-prometheus, bound
        to the chart's stratus-metrics-reader) and every agent (with their metrics token)."""
        account = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": monitoring.ACCOUNT, "namespace": AGENT_SYSTEM_NAMESPACE},
        }
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": monitoring.ACCOUNT},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": monitoring.READER_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": monitoring.ACCOUNT,
                          "namespace": AGENT_SYSTEM_NAMESPACE}],
        }  # fmt: skip
        self._apply("Prometheus' account", json.dumps(account), json.dumps(binding))
        self.prometheus.configure(
            f"127.0.0.1:{self.operator_metrics_port}",
            [(node.name, f"127.0.0.1:{self.port_of(node)}") for node in self.nodes],
            self.plane.pki_dir / "ca.crt", self._token(monitoring.ACCOUNT, "Prometheus"),
        )  # fmt: skip
        self.prometheus.up()

    def up_node_services(self) -> None:
        """The control plane, and what a node needs besides its agent: Open vSwitch,
        libvirtd, the external network."""
        self.plane.up(crd_dir=REPO_ROOT / "crds")
        self._record_node()
        self.node.up()
        external.ensure(self.external_bridge, self.external_gateway)

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

    def _tunnel(self, node: NodeSlot) -> dict[str, Any]:
        """The node's simulated namespace, Open vSwitch and underlay address (simnodes.py),
        as its agent's network.tunnel section."""
        sim = self.simnodes.up(node.index)
        return {
            "local_ip": sim.local_ip,
            "bridge": "br-tun",
            "ovsdb": sim.ovsdb,
            "rundir": str(sim.rundir),
            "link": {"int_port": sim.int_port, "tun_port": sim.tun_port},
        }

    def serve_test_image(self, server: Daemon | None = None) -> None:
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
        (server or self.image_server).start()

    def agent_settings(
        self, node: NodeSlot | None = None, tunnel: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A node's agent configuration (stratus_agent.config.AgentConfig, as YAML/JSON);
        node 1's by default. `tunnel`: its network.tunnel section, with several nodes."""
        node = node or self.node_slot(1)
        pki = self.plane.pki_dir
        network: dict[str, Any] = {
            "bridge": node.bridge,
            "datapath_type": "netdev",
            # One bridge on the host's Open vSwitch for every node: one L2 segment.
            "physical_networks": {external.PHYSICAL_NETWORK: self.external_bridge},
        }
        if tunnel is not None:
            network["tunnel"] = tunnel
        if self.node.vswitchd_target is not None:
            network["vswitchd_target"] = self.node.vswitchd_target
        return {
            "node_name": node.name,
            "token_file": str(node.config_dir / "token"),
            "metrics_token_file": str(self.prometheus.agent_token_file),
            "state_dir": str(node.state_dir),
            "isolation": {
                "uid_first": NODE_UID_FIRST + (node.index - 1) * NODE_UID_COUNT,
                "uid_count": NODE_UID_COUNT,
            },
            "compute": "libvirt",
            "libvirt_uri": LIBVIRT_URI,
            "listen": {
                "host": "127.0.0.1",
                "port": self.port_of(node),
                # Explicit whatever the agent's default: the token and guest specs travel
                # over TLS only.
                "insecure": False,
                "tls_cert_file": str(pki / "agent.crt"),
                "tls_key_file": str(pki / "agent.key"),
            },
            "network": network,
            # Loopback is refused by default: this cloud's image server is the one exception,
            # and none of its own service ports may ever serve an image.
            "images": {
                "sources": {
                    "allowed_endpoints": [IMAGE_ENDPOINT],
                    "refused_ports": self.service_ports(),
                }
            },
        }

    def _start_agent(self, node: NodeSlot, tunnel: dict[str, Any] | None) -> None:
        node.config_dir.mkdir(parents=True, exist_ok=True)
        token = node.config_dir / "token"
        if not token.exists():
            token.write_text(secrets.token_urlsafe(32))
            token.chmod(0o600)
        settings = self.agent_settings(node, tunnel)
        node.config_file.write_text(json.dumps(settings, indent=2) + "\n")
        agent = self.agent_daemon(node)
        agent.start()
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._agent_answers(node):
                return
            if not agent.running():
                log, tail = agent.log_file, agent.log_tail()
                raise ControlPlaneError(f"agent {node.name} exited; last lines of {log}:\n{tail}")
            time.sleep(0.2)
        raise ControlPlaneError(f"agent {node.name} did not answer; see {agent.log_file}")

    def _agent_answers(self, node: NodeSlot) -> bool:
        request = urllib.request.Request(
            f"https://127.0.0.1:{self.port_of(node)}/healthz",
            headers={"Authorization": f"Bearer {node.token}"},
        )
        try:
            with urllib.request.urlopen(request, context=self.plane.ssl_context(), timeout=5):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def _register_node(self, node: NodeSlot) -> None:
        ca = (self.plane.pki_dir / "ca.crt").read_text()
        secret_name = f"agent-{node.name}"
        manifests = {
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": AGENT_SYSTEM_NAMESPACE}},
                {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                 "metadata": {"name": secret_name, "namespace": AGENT_SYSTEM_NAMESPACE},
                 "stringData": {"token": node.token, "ca.crt": ca}},
                {"apiVersion": "stratus.io/v1alpha1", "kind": "Hypervisor",
                 "metadata": {"name": node.name, "labels": {HOSTNAME_LABEL: node.name}},
                 "spec": {"endpoint": f"https://127.0.0.1:{self.port_of(node)}",
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
        """Stop what the records in STATE/run prove ours, remove this cloud's guests, bridges
        (the external one too, with the host's address on it) and node files; leave
        everything else, and say what was left and why."""
        agents = tuple(node.daemon_name for node in self.nodes)
        # First, while the API server still answers: the kubelet stops its pods itself.
        report = processes.StopReport(stopped=self.kubelet.down())
        apps = ("image-server", *agents, "stratus-operator", monitoring.DAEMON_NAME)
        report.add(processes.stop_all(self.run_dir, apps))
        self._remove_node_state()
        report.notes.extend(f"removed {what}" for what in self.simnodes.down())
        report.add(self.ceph.down())
        report.add(self.node.stop())
        report.add(self.plane.stop())
        # Records of names this version does not know; OVS and libvirtd, which node.stop()
        # may have left running on purpose, are not among them.
        known = {*APP_NAMES, *agents, *ceph.DAEMON_NAMES, *OVS_NAMES, *LIBVIRT_NAMES,
                 *DAEMON_NAMES, *kubeletnode.DAEMON_NAMES}  # fmt: skip
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
            for node in self.nodes:
                self._remove_dhcp_servers(node, node.bridge)
                self._remove_dhcp_servers(node, self.external_bridge)
                self._remove_routers(node)
                subprocess.run([tool("ovs-vsctl"), "--timeout=10", "--if-exists", "del-br",
                                node.bridge], capture_output=True, check=False)  # fmt: skip
            external.remove(self.external_bridge)  # and the host's address with it
        shutil.rmtree(self.node_dir, ignore_errors=True)

    @staticmethod
    def _remove_dhcp_servers(node: NodeSlot, bridge: str) -> None:
        """dnsmasq outlives its agent on purpose (leases survive a restart): stop the node's
        servers on `bridge`, with their namespaces and ports, as the agent's sweep does."""
        servers = DhcpServers(node.state_dir, bridge, tool("ovs-vsctl"))
        try:
            asyncio.run(servers.sweep(()))
        except Exception as exc:  # down goes on; the rest is removed below
            print(f"stratus dev: DHCP servers of {node.name} not all removed: {exc}",
                  file=sys.stderr)  # fmt: skip

    @staticmethod
    def _remove_routers(node: NodeSlot) -> None:
        """Routers live on in their namespaces without their agent: remove the node's, with
        their ports, as the agent's sweep does."""
        routers = Routers(node.state_dir, node.bridge, tool("ovs-vsctl"))
        try:
            asyncio.run(routers.sweep(()))
        except Exception as exc:  # down goes on; the bridges are removed below
            print(f"stratus dev: routers of {node.name} not all removed: {exc}",
                  file=sys.stderr)  # fmt: skip

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
            "get", "instance", name, "-n", namespace,
            "-o", "jsonpath={.metadata.uid} {.status.node}",
            check=False,
        )  # fmt: skip
        if got.returncode != 0:
            raise ControlPlaneError(got.stderr.strip())
        uid, _, node_name = got.stdout.strip().partition(" ")
        node = next((n for n in self.nodes if n.name == node_name), self.node_slot(1))
        log = node.state_dir / "guests" / naming.console_log_file(uid)
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
