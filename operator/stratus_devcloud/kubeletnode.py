"""A real Kubernetes node in the local cluster: containerd (a private instance: its own root,
state and socket) and a kubelet, with kube-scheduler placing pods on it, so a chart's
Deployments and DaemonSets really run (`stratus dev up --kubelet`).

Built from Debian's containerd, runc and CNI plugins and the kubelet of hack/kube. What it
needs of this machine, as ../shared/ENVIRONMENT.md found it: cgroup v1 (cgroupfs driver,
`failCgroupV1: false`), no CAP_SYS_RESOURCE for root (`restrict_oom_score_adj`), no
registry (the sandbox image is built here from hack/node/pause.c and imported), and a
non-loopback node address (a veth pair holding TEST-NET-1's 192.0.2.1; this kernel has no
dummy links). Pods sit on a bridge of their own (`stratus-pods`, 10.85.0.0/24); only
hostNetwork pods reach the API server, which listens on loopback.

Everything lives under the control plane's state directory, in node/. `down` undoes what
the kubelet did to the host: its pods' containers and mounts, its kubepods cgroups, the
kernel settings it changed, the veth and the bridge.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from stratus_devcloud import images, kubeconfig, processes
from stratus_devcloud.controlplane import (
    ControlPlaneError,
    LocalControlPlane,
    wait_for,
)
from stratus_devcloud.images import SANDBOX_IMAGE
from stratus_devcloud.pki import NODE_IP, NODE_NAME
from stratus_devcloud.processes import Daemon

DAEMON_NAMES = ("containerd", "kube-scheduler", "kubelet", "kube-proxy")
POD_CIDR = "10.85.0.0/24"
POD_BRIDGE = POD_NETWORK = "stratus-pods"  # the bridge, and the CNI network's name
NODE_LINK = "stratus-node0"  # the veth end holding NODE_IP; its peer is NODE_LINK + "p"
CNI_BIN_DIR = "/usr/lib/cni"
READY_TIMEOUT_SECONDS = 120.0
EVICT_TIMEOUT_SECONDS = 30.0
# Host paths the kubelet and containerd use whatever they are told; removed by `down` when
# `up` found them absent.
HOST_PATHS = (Path("/var/lib/kubelet"), Path("/run/containerd"))
CONTAINER_LOG_LINKS = Path("/var/log/containers")
CNI_ADDRESSES = Path("/var/lib/cni/networks") / POD_NETWORK  # what host-local handed out
# What the kubelet sets at start (protectKernelDefaults is off), put back by `down`.
KERNEL_SETTINGS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class KubeletNode:
    def __init__(self, plane: LocalControlPlane) -> None:
        self.plane = plane
        self.dir = plane.state_dir / "node"

    # -- layout ---------------------------------------------------------------------------
    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.dir / "kubelet"

    def ctr(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """`ctr` against this node's containerd, in the namespace the kubelet uses."""
        argv = ["ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", *args]
        return subprocess.run(argv, capture_output=True, text=True, check=check)

    def _tasks(self) -> list[str] | None:
        """The running containers' IDs; None when containerd does not answer."""
        listed = self.ctr("tasks", "ls", "-q")
        return listed.stdout.split() if listed.returncode == 0 else None

    def daemons(self) -> list[Daemon]:
        bins = self.plane.bin_dir()
        run, logs = self.plane.run_dir, self.plane.state_dir / "logs"
        containerd = ("containerd", f"--config={self.dir / 'containerd' / 'config.toml'}")
        scheduler = (
            str(bins / "kube-scheduler"),
            f"--kubeconfig={self.dir / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={self.dir / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={self.dir / 'scheduler.kubeconfig'}",
            "--leader-elect=false",
            "--secure-port=0",
        )
        kubelet = (
            str(bins / "kubelet"),
            f"--config={self.dir / 'kubelet.yaml'}",
            f"--kubeconfig={self.dir / 'kubelet.kubeconfig'}",
            f"--root-dir={self.kubelet_root}",
            f"--node-ip={NODE_IP}",
            f"--hostname-override={NODE_NAME}",
        )
        proxy = (str(bins / "kube-proxy"), f"--config={self.dir / 'kube-proxy.yaml'}")
        argvs = (containerd, scheduler, kubelet, proxy)
        return [Daemon(n, a, run, logs) for n, a in zip(DAEMON_NAMES, argvs, strict=True)]

    # -- lifecycle ------------------------------------------------------------------------
    def prepare(self) -> None:
        """Configuration files, kubeconfigs, the node's address and the sandbox image's
        archive; keeps whatever already exists."""
        for sub in ("containerd/root", "containerd/state", "cni", "pods"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        pki = self.plane.pki_dir
        for name, stem, user in (("kubelet", "node", f"system:node:{NODE_NAME}"),
                                 ("scheduler", "scheduler", "system:kube-scheduler"),
                                 ("kube-proxy", "proxy", "system:kube-proxy")):  # fmt: skip
            kubeconfig.write_kubeconfig(
                self.dir / f"{name}.kubeconfig", server=self.plane.server_url, ca=pki / "ca.crt",
                cert=pki / f"{stem}.crt", key=pki / f"{stem}.key", user=user,
                context="stratus-dev",
            )  # fmt: skip
        (self.dir / "containerd" / "config.toml").write_text(self._containerd_config())
        (self.dir / "cni" / "10-stratus-pods.conflist").write_text(_cni_config())
        (self.dir / "kubelet.yaml").write_text(self._kubelet_config())
        (self.dir / "kube-proxy.yaml").write_text(self._proxy_config())
        _ensure_node_link()

    def up(self) -> float:
        """Start containerd, the scheduler and the kubelet; return the seconds from the
        kubelet's start until its Node is Ready."""
        self.prepare()
        daemons = {d.name: d for d in self.daemons()}
        self._save_host_state()
        containerd = daemons["containerd"]
        containerd.start()
        self._wait_for(self.containerd_socket.exists, "containerd's socket", [containerd])
        self._import_sandbox_image()
        self._grant_node_rights()
        daemons["kube-scheduler"].start()
        started = time.monotonic()
        daemons["kubelet"].start()
        daemons["kube-proxy"].start()
        self._wait_for(self.ready, f"Node {NODE_NAME} Ready", daemons.values())
        return time.monotonic() - started

    def _wait_for(
        self, done: Callable[[], bool], what: str, daemons: Iterable[Daemon],
        timeout: float = READY_TIMEOUT_SECONDS,
    ) -> None:  # fmt: skip
        logs = self.plane.state_dir / "logs"
        wait_for(done, daemons, timeout, f"no {what} after {timeout:.0f} s; see {logs}")

    def ready(self) -> bool:
        shown = self.plane.kubectl_run(
            "get", "node", NODE_NAME, "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}', check=False,
        )  # fmt: skip
        return shown.returncode == 0 and shown.stdout.strip() == "True"

    def down(self) -> list[str]:
        """Stop the node and undo what it did to the host; return what was running."""
        run = self.plane.run_dir
        stopped = []
        if processes.Tracked("kube-scheduler", run).stop():  # nothing is placed again
            stopped.append("kube-scheduler")
        if processes.Tracked("kubelet", run).running():
            self._evict_pods()
        if processes.Tracked("kubelet", run).stop():
            stopped.append("kubelet")
        if processes.Tracked("kube-proxy", run).stop():
            stopped.append("kube-proxy")
        if self._host_state() is not None:
            self._remove_service_rules()
        if processes.Tracked("containerd", run).running():
            self._remove_containers()
        if processes.Tracked("containerd", run).stop():
            stopped.append("containerd")
        if self._host_state() is None:
            return stopped  # this cloud never started its node: the host is not ours to touch
        _kill_shims(self.dir)
        self._remove_pod_networks()
        _unmount_under(self.dir)
        _remove_kubepods_cgroups()
        self._restore_kernel_settings()
        for link in (NODE_LINK, POD_BRIDGE):
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        self._remove_host_leftovers()  # last: it forgets the host's state as `up` found it
        return stopped

    def _evict_pods(self) -> None:
        """Have the kubelet stop every pod on the node, so each sandbox's network is torn
        down by its CNI plugins (addresses, NAT rules, namespace), not left behind."""
        if not self.plane.ready():
            return
        self.plane.kubectl_run(
            "delete", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={NODE_NAME}",
            "--grace-period=0", "--force", "--wait=false", check=False,
        )  # fmt: skip

        def stopped() -> bool:
            """No container runs and no pod network is left: containerd tears a sandbox's
            network down (CNI DEL, then its namespace) after its container stopped."""
            return not self._tasks() and not self._pod_networks_left()

        with contextlib.suppress(ControlPlaneError):  # what is left is killed without it
            self._wait_for(stopped, "pods stopped", [], timeout=EVICT_TIMEOUT_SECONDS)

    # -- parts ----------------------------------------------------------------------------
    def _containerd_config(self) -> str:
        root = self.dir / "containerd"
        return f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
[grpc]
  address = "{self.containerd_socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{self.dir / "cni"}"
"""

    def _kubelet_config(self) -> str:
        pki = self.plane.pki_dir
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(pki / "kubelet.crt"),
            "tlsPrivateKeyFile": str(pki / "kubelet.key"),
            "address": str(NODE_IP),
            "readOnlyPort": 0,
            "healthzPort": 0,
            # cgroup v1 here, which Kubernetes 1.35 accepts only when told to.
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            # Images are imported, not pulled: collecting them would lose them for good.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "makeIPTablesUtilChains": False,
            "podLogsDir": str(self.dir / "pods"),
            "clusterDomain": "cluster.local",
            "resolvConf": "/etc/resolv.conf",
        }
        return json.dumps(config, indent=2) + "\n"

    def _proxy_config(self) -> str:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.dir / "kube-proxy.kubeconfig")},
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            # Only the node address: localhost NodePorts would set route_localnet on the
            # host, and the machine's other addresses are not the node's.
            "nodePortAddresses": [f"{NODE_IP}/32"],
            "iptables": {"localhostNodePorts": False},
            # The host's conntrack limits and timeouts stay as they are.
            "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
            # No ports of its own beyond the Services': several clouds share this host.
            "healthzBindAddress": "",
            "metricsBindAddress": "",
        }  # fmt: skip
        return json.dumps(config, indent=2) + "\n"

    def _remove_service_rules(self) -> None:
        """kube-proxy's iptables chains and rules (it leaves them when stopped)."""
        proxy = self.plane.bin_dir() / "kube-proxy"
        subprocess.run([str(proxy), f"--config={self.dir / 'kube-proxy.yaml'}", "--cleanup"],
                       capture_output=True, check=False)  # fmt: skip

    def _import_sandbox_image(self) -> None:
        if SANDBOX_IMAGE not in self.ctr("images", "ls", "-q", check=True).stdout.split():
            self.import_image(images.sandbox_archive(), SANDBOX_IMAGE)

    def import_image(self, archive: Path, reference: str) -> None:
        """An OCI archive into the node's containerd as `reference` (replacing an image of
        that name), where its kubelet finds it without a registry."""
        self.ctr("images", "import", "--base-name", reference.rsplit(":", 1)[0], str(archive),
                  check=True)  # fmt: skip

    def _grant_node_rights(self) -> None:
        """Bind the node role to the nodes group: an RBAC-only server has no Node
        authorizer to grant the kubelet its own Node, pods and secrets."""
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "stratus-dev:nodes"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:node"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                          "name": "system:nodes"}],
        }  # fmt: skip
        self.plane.kubectl_run("apply", "-f", "-", input=json.dumps(binding))

    def _remove_containers(self) -> None:
        """Every container and sandbox the kubelet left: killed, then deleted."""
        tasks = self._tasks() or []
        for task in tasks:
            self.ctr("tasks", "kill", "-s", "SIGKILL", task)
        deadline = time.monotonic() + 10
        for task in tasks:
            while self.ctr("tasks", "rm", "-f", task).returncode != 0:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        for container in self.ctr("containers", "ls", "-q").stdout.split():
            self.ctr("containers", "rm", container)

    @property
    def _host_state_file(self) -> Path:
        return self.dir / "host-state.json"

    def _host_state(self) -> dict[str, Any] | None:
        """The host as `up` found it; None when this state directory never started a node."""
        saved = self._host_state_file
        found: dict[str, Any] | None = json.loads(saved.read_text()) if saved.exists() else None
        return found

    def _save_host_state(self) -> None:
        """The kernel settings the kubelet changes, which of its host paths exist, and the
        network namespaces there are before any pod's."""
        saved = self._host_state_file
        if saved.exists():
            return
        state = {
            "settings": {k: (Path("/proc/sys") / k).read_text().strip() for k in KERNEL_SETTINGS},
            "absent": [str(p) for p in HOST_PATHS if not p.exists()],
            "netns": sorted(_network_namespaces()),
        }
        saved.write_text(json.dumps(state) + "\n")

    def _pod_namespaces(self) -> set[str]:
        """Network namespaces made since `up`: the pods'."""
        state = self._host_state()
        return _network_namespaces() - set(state["netns"] if state else ())

    def _pod_networks_left(self) -> set[str]:
        """What is left of pod networks: namespaces made since `up`, NAT rules of the pod
        network, addresses host-local still holds."""
        left = {f"netns {n}" for n in self._pod_namespaces()}
        left |= {f"nat {r}" for r in _pod_nat_rules()}
        if CNI_ADDRESSES.is_dir():
            left |= {f"address {p.name}" for p in CNI_ADDRESSES.glob("[0-9]*")}
        return left

    def _remove_pod_networks(self) -> None:
        """What the CNI plugins did not tear down (a kubelet that died first): the pods'
        namespaces (their veths go with them) and NAT rules and chains."""
        for name in self._pod_namespaces():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        chains = set()
        for rule in _pod_nat_rules():
            fields = rule.split()
            if fields[:1] == ["-A"]:
                subprocess.run(["iptables", "-t", "nat", "-D", *shlex.split(rule)[1:]],
                               capture_output=True, check=False)  # fmt: skip
                if "-j" in fields:
                    chains.add(fields[fields.index("-j") + 1])
        for chain in chains:
            if chain.startswith("CNI-"):
                subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True,
                               check=False)  # fmt: skip
                subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True,
                               check=False)  # fmt: skip

    def _restore_kernel_settings(self) -> None:
        state = self._host_state()
        for key, value in (state["settings"] if state else {}).items():
            (Path("/proc/sys") / key).write_text(value + "\n")

    def _remove_host_leftovers(self) -> None:
        """The container log links into this node's pod logs, host paths that `up` found
        absent, and the CNI plugins' address records of the pod network."""
        pods = str(self.dir / "pods")
        if CONTAINER_LOG_LINKS.is_dir():
            for link in CONTAINER_LOG_LINKS.iterdir():
                if link.is_symlink() and str(link.readlink()).startswith(pods):
                    link.unlink()
        state = self._host_state()
        for path in state["absent"] if state else ():
            shutil.rmtree(path, ignore_errors=True)
        self._host_state_file.unlink(missing_ok=True)
        shutil.rmtree(CNI_ADDRESSES, ignore_errors=True)


def _cni_config() -> str:
    config = {
        "cniVersion": "1.0.0",
        "name": POD_NETWORK,
        "plugins": [
            {"type": "bridge", "bridge": POD_BRIDGE, "isGateway": True, "ipMasq": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }  # fmt: skip
    return json.dumps(config, indent=2) + "\n"


def _ensure_node_link() -> None:
    """A veth pair, up, whose first end holds NODE_IP: the kubelet's node address."""
    shown = subprocess.run(["ip", "-o", "addr", "show", "dev", NODE_LINK], capture_output=True,
                           text=True, check=False)  # fmt: skip
    if shown.returncode == 0 and f" {NODE_IP}/" in shown.stdout:
        return
    subprocess.run(["ip", "link", "del", NODE_LINK], capture_output=True, check=False)
    for argv in (
        ["ip", "link", "add", NODE_LINK, "type", "veth", "peer", "name", f"{NODE_LINK}p"],
        ["ip", "addr", "add", f"{NODE_IP}/32", "dev", NODE_LINK],
        ["ip", "link", "set", f"{NODE_LINK}p", "up"],
        ["ip", "link", "set", NODE_LINK, "up"],
    ):
        subprocess.run(argv, capture_output=True, check=True)


def _network_namespaces() -> set[str]:
    shown = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in shown.stdout.splitlines() if line.strip()}


def _pod_nat_rules() -> list[str]:
    """The NAT rules the bridge plugin made for the pod network (they name it)."""
    shown = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True,
                           check=False)  # fmt: skip
    return [line for line in shown.stdout.splitlines() if f'\\"{POD_NETWORK}\\"' in line]


def _kill_shims(directory: Path) -> None:
    """containerd's shims outlive it; those of this node's containerd are stopped."""
    found = subprocess.run(["pgrep", "-f", f"containerd-shim.*{directory}"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    for pid in found.stdout.split():
        subprocess.run(["kill", "-9", pid], check=False)


def _unmount_under(directory: Path) -> None:
    """Unmount whatever is mounted under `directory` (pod volumes, rootfs snapshots, the
    kubelet's own bind mount), deepest first."""
    prefix = str(directory.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if (m + "/").startswith(prefix)), key=len,
                        reverse=True):  # fmt: skip
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _remove_kubepods_cgroups() -> None:
    """The kubelet's kubepods hierarchy in each cgroup v1 controller, leaves first."""
    if not CGROUP_ROOT.is_dir():
        return
    for controller in CGROUP_ROOT.iterdir():
        top = controller / "kubepods"
        if not top.is_dir():
            continue
        inner = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for cgroup in [*inner, top]:
            with contextlib.suppress(OSError):  # still holds a process: left for the next down
                cgroup.rmdir()
