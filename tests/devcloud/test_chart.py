"""The Helm chart on a real kubelet node: the images built offline run as pods, the chart
renders manifests the API server accepts for every values toggle, and `helm install --wait`
brings up two operator replicas and an agent on the labelled node. The agent enrolls for
credentials of its own node and its Hypervisor registers itself; Instances run on it; the
operators reconcile with the chart's ServiceAccount alone, fail over within 15 s of the
leader's death, upgrade, and uninstall cleanly. The agent's compute is the fake driver here
(the guest itself is the all-in-one's e2e tests' part)."""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from stratus_devcloud import allinone, images
from stratus_devcloud.pki import NODE_IP, NODE_NAME
from testsupport import (
    REPO_ROOT,
    audited,
    basics,
    dev_kubectl,
    instance,
    promtool_check_metrics,
    sample,
    samples,
    scrape,
    stratus,
    wait_until,
)

CHART = REPO_ROOT / "charts" / "stratus"
INSECURE = ssl._create_unverified_context()  # by the pods' addresses, not the Service's name
RELEASE, NAMESPACE = "stratus", "stratus-system"


class Node:
    """The all-in-one's control plane and kubelet node, with the images imported."""

    def __init__(self, state: Path, image_port: int) -> None:
        self.state = state
        self.cloud = allinone.DevCloud(state)
        self.image_port = image_port
        # The agent's node files, where the node's own services could read them.
        self.agent_state = Path("/var/lib/stratus") / f"chart-test-{uuid.uuid4().hex[:8]}"

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        done = dev_kubectl(self.state, *args, stdin=stdin)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def helm(self, *args: str, check: bool = True) -> Any:
        done = subprocess.run(
            [str(self.state / "bin" / "helm"), f"--kubeconfig={self.state / 'kubeconfig'}",
             *args], capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert done.returncode == 0 or not check, (args, done.stdout, done.stderr)
        return done

    def in_cluster_values(self) -> list[str]:
        """Imported images; a fake-compute agent with node files of its own; the test's
        image server on the node address allowed as an Image source."""
        return ["--set", "image.pullPolicy=Never", "--set", f"agent.stateDir={self.agent_state}",
                "--set-json", 'agent.config={"compute":"fake"}', "--set-json",
                f'operator.allowImageEndpoints=["{NODE_IP}:{self.image_port}"]']  # fmt: skip


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    """A few bytes at any path: enough for an Image a fake node "downloads"."""

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()

    def do_GET(self) -> None:
        self.do_HEAD()
        self.wfile.write(b"QFI\xfb")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    state = tmp_path_factory.mktemp("chart") / "dev"
    up = stratus("dev", "up", "--control-plane-only", "--kubelet", "--state-dir", str(state))
    try:
        assert up.returncode == 0, up.stderr
        built = stratus("dev", "images", "--import", "--state-dir", str(state), timeout=1800)
        assert built.returncode == 0, built.stderr
        for recipe in images.RECIPES.values():
            assert recipe.reference in built.stdout, built.stdout
        server = http.server.ThreadingHTTPServer((str(NODE_IP), 0), _ImageHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        made = Node(state, server.server_address[1])
        made.kubectl("create", "namespace", NAMESPACE)  # for the dry runs, before the install
        yield made
        server.shutdown()
    finally:
        down = stratus("dev", "down", "--state-dir", str(state))
        assert down.returncode == 0, down.stderr
        if "made" in locals():
            shutil.rmtree(made.agent_state, ignore_errors=True)


def pod(name: str, image: str, script: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never",
                                 "command": ["sh", "-c", script]}]},
    }  # fmt: skip


def test_the_images_run_as_pods(node: Node) -> None:
    checks = {
        # Unprivileged, and the operator's code and dependencies import.
        "operator": (images.OPERATOR.reference,
                     "id -u && python -m stratus_cli operator --help | head -1 && "
                     "python -c 'import stratus_operator.main, kopf; print(\"imports\")'"),
        # Debian's bindings to the node's daemons, and the tools the drivers run.
        "agent": (images.AGENT.reference,
                  "id -u && python -c 'import libvirt, rados, rbd, stratus_agent.main; "
                  "print(\"imports\")' && qemu-img --version | head -1 && "
                  "ovs-vsctl --version | head -1 && dnsmasq --version | head -1 && "
                  "rbd --version && lvm version | head -1 && conntrack --version"),
    }  # fmt: skip
    items = [pod(name, image, script) for name, (image, script) in checks.items()]
    node.kubectl("apply", "-f", "-", stdin=json.dumps({"kind": "List", "apiVersion": "v1",
                                                      "items": items}))  # fmt: skip

    def finished(name: str) -> str | None:
        phase = node.json("get", "pod", name, "-n", "default")["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    logs = {}
    for name in checks:
        phase = wait_until(f"pod {name} done", lambda n=name: finished(n), timeout=120)
        logs[name] = node.kubectl("logs", name, "-n", "default")
        assert phase == "Succeeded", (name, logs[name])
    operator, agent = logs["operator"].splitlines(), logs["agent"].splitlines()
    assert operator[0] == "65532"
    assert operator[1].startswith("Usage:") and operator[2] == "imports"
    assert agent[0] == "0" and agent[1] == "imports"
    assert agent[2].startswith("qemu-img version")
    assert "Open vSwitch" in agent[3] and agent[4].startswith("Dnsmasq version")
    assert agent[5].startswith("ceph version")
    node.kubectl("delete", "pod", "operator", "agent", "-n", "default", "--wait=false")


MONITORING = [
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.prometheusRule.enabled=true",
    "--set",
    "metrics.dashboard.enabled=true",
]


def check_monitoring_objects(documents: list[dict[str, Any]]) -> list[str]:
    """The Prometheus Operator's objects, which this cluster has no CRDs for: a
    PrometheusRule's rules pass `promtool check rules`, and each ServiceMonitor selects a
    Service of the release with the port it scrapes and names Secrets the release makes.
    The kinds checked."""
    services = [d for d in documents if d["kind"] == "Service"]
    secrets = {d["metadata"]["name"] for d in documents if d["kind"] == "Secret"}
    checked = []
    for doc in documents:
        if doc["kind"] == "PrometheusRule":
            rules = yaml.safe_dump(doc["spec"])
            with tempfile.NamedTemporaryFile("w", suffix=".yaml") as out:
                out.write(rules)
                out.flush()
                done = subprocess.run(["promtool", "check", "rules", out.name],
                                      capture_output=True, text=True, check=False)  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
        elif doc["kind"] == "ServiceMonitor":
            wanted = doc["spec"]["selector"]["matchLabels"]
            for endpoint in doc["spec"]["endpoints"]:
                assert [
                    s
                    for s in services
                    if wanted.items() <= s["metadata"]["labels"].items()
                    and endpoint["port"] in [p["name"] for p in s["spec"]["ports"]]
                ], doc
                token = (endpoint.get("authorization") or {}).get("credentials")
                assert token is None or token["name"] in secrets, token
        else:
            continue
        checked.append(doc["kind"])
    return checked


@pytest.mark.parametrize(
    "toggles",
    [
        [],
        ["--set", "operator.leaderElection=false"],
        ["--set", "agent.enabled=false"],
        ["--set", "rbac.aggregateToDefaultRoles=false"],
        ["--set-json", 'operator.watchNamespaces=["team-a","team-b"]',
         "--set-json", 'operator.allowImageEndpoints=["images.internal:8080"]',
         "--set-json", 'imagePullSecrets=[{"name":"registry"}]',
         "--set-json", 'operator.tolerations=[{"operator":"Exists"}]'],
        ["--set", "metrics.enabled=false"],
        MONITORING,
        [*MONITORING, "--set", "agent.enabled=false"],
    ],
    ids=["defaults", "no-leader-election", "no-agent", "no-aggregated-roles", "namespaced",
         "no-metrics", "monitoring", "monitoring-no-agent"],
)  # fmt: skip
def test_every_toggle_renders_manifests_the_api_server_accepts(
    node: Node, toggles: list[str]
) -> None:
    lint = node.helm("lint", "--strict", str(CHART), *toggles)
    assert "0 chart(s) failed" in lint.stdout, lint.stdout
    rendered = node.helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "--include-crds",
                         *toggles).stdout  # fmt: skip
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    monitoring = [d for d in documents if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert sorted(check_monitoring_objects(documents)) == sorted(d["kind"] for d in monitoring)
    if toggles and toggles[: len(MONITORING)] == MONITORING:
        assert {d["kind"] for d in monitoring} == {"ServiceMonitor", "PrometheusRule"}
    # The API server's own validation against its OpenAPI schemas: a dry run, nothing kept.
    others = [d for d in documents if d not in monitoring]
    done = dev_kubectl(node.state, "apply", "--dry-run=server", "-n", NAMESPACE, "-f", "-",
                       stdin=yaml.safe_dump_all(others))  # fmt: skip
    assert done.returncode == 0, done.stderr
    kinds = {line.split("/")[0] for line in done.stdout.splitlines()}
    assert {"deployment.apps", "clusterrole.rbac.authorization.k8s.io",
            "customresourcedefinition.apiextensions.k8s.io"} <= kinds, kinds  # fmt: skip


def test_bad_values_are_refused_naming_the_value(node: Node) -> None:
    done = node.helm("template", RELEASE, str(CHART), "--set", "operator.replicas=0",
                     "--set", "operator.bogus=1", check=False)  # fmt: skip
    assert done.returncode != 0
    assert "/operator/replicas" in done.stderr and "bogus" in done.stderr


def leader(node: Node) -> str:
    """The replica holding the Lease; "" while none does."""
    done = dev_kubectl(node.state, "get", "lease", "stratus-operator", "-n", NAMESPACE,
                       "-o", "jsonpath={.spec.holderIdentity}")  # fmt: skip
    assert done.returncode == 0 or "NotFound" in done.stderr, done.stderr
    return done.stdout if done.returncode == 0 else ""


def component_pods(node: Node, component: str) -> list[dict[str, Any]]:
    listed = node.json("get", "pods", "-n", NAMESPACE, "-l",
                       f"app.kubernetes.io/component={component}")  # fmt: skip
    return [p for p in listed["items"] if not p["metadata"].get("deletionTimestamp")]


def operator_pods(node: Node) -> list[dict[str, Any]]:
    return component_pods(node, "operator")


def ready(node: Node, *what: str) -> bool:
    found = node.json("get", *what)
    conditions = found.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def running(node: Node, name: str) -> bool:
    found = node.json("get", "instance", name, "-n", "default")
    return found.get("status", {}).get("phase") == "Running"


def boot(node: Node, name: str) -> None:
    node.kubectl("apply", "-n", "default", "-f", "-", stdin=json.dumps(instance(name)))
    wait_until(f"Instance {name} Running", lambda: running(node, name), timeout=90)


def check_metrics(node: Node) -> None:
    """The chart's metrics, as a Prometheus in the cluster reads them: each operator replica's
    /metrics with a token bound to the chart's stratus-metrics-reader, over TLS from the
    published CA (one replica leads); the agent's with the chart's agent metrics token."""
    node.kubectl("create", "serviceaccount", "prometheus", "-n", NAMESPACE)
    reader = f"{RELEASE}-metrics-reader"
    node.kubectl("create", "clusterrolebinding", "prometheus-stratus", "--clusterrole", reader,
                 "--serviceaccount", f"{NAMESPACE}:prometheus")  # fmt: skip
    token = node.kubectl("create", "token", "prometheus", "-n", NAMESPACE).strip()
    ca = node.state.parent / "stratus-ca.crt"
    ca.write_text(node.json("get", "configmap", f"{RELEASE}-ca", "-n", NAMESPACE)["data"]["ca.crt"])
    leading = 0.0
    for pod in operator_pods(node):
        url = f"https://{pod['status']['podIP']}:8444/metrics"
        status, text = scrape(url, token, ca, check_hostname=False)  # by the pod's address
        assert status == 200, text
        assert promtool_check_metrics(text) == ""
        leading += sample(samples(text), "stratus_operator_leader") or 0
        assert scrape(url, None, ca, check_hostname=False)[0] == 401
    assert leading == 1
    secret = node.json("get", "secret", f"{RELEASE}-agent-metrics", "-n", NAMESPACE)
    agent_token = base64.b64decode(secret["data"]["token"]).decode()
    status, text = scrape(f"https://{NODE_IP}:8441/metrics", agent_token, ca)
    assert status == 200, text
    assert sample(samples(text), "stratus_guest_state", namespace="default", name="vm-1",
                  state="running") == 1  # fmt: skip
    node.kubectl("delete", "clusterrolebinding", "prometheus-stratus")


def check_consoles_and_dashboard(node: Node) -> None:
    """Through the operator pods' console port: a user's console session reaches the agent
    pod (whose fake guest has no console, which it says), and a dashboard session made on
    one replica is good on the other (the chart's shared key), with its assets in the
    image."""
    node.kubectl("create", "serviceaccount", "alice", "-n", "default")
    node.kubectl("create", "rolebinding", "alice-admin", "--clusterrole", "admin",
                 "--serviceaccount", "default:alice", "-n", "default")  # fmt: skip
    token = node.kubectl("create", "token", "alice", "-n", "default").strip()
    first, second = (f"https://{p['status']['podIP']}:8445" for p in operator_pods(node))

    async def console() -> tuple[int | None, str]:
        async with aiohttp.ClientSession() as session, session.ws_connect(
            f"{first}/v1/namespaces/default/instances/vm-1/console", ssl=INSECURE,
            headers={"Authorization": f"Bearer {token}"}, protocols=["binary"],
        ) as ws:  # fmt: skip
            message = await ws.receive(timeout=30)
            return ws.close_code, str(message.extra)

    code, reason = asyncio.run(console())
    assert code == 4409 and "HTTP 409" in reason, (code, reason)  # the agent pod answered

    form = urllib.parse.urlencode({"token": token}).encode()
    login = urllib.request.Request(f"{first}/login", form, {"Origin": first}, method="POST")
    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=INSECURE))
    with pytest.raises(urllib.error.HTTPError) as redirected:
        opener.open(login, timeout=30)
    assert redirected.value.code == 303
    cookie = redirected.value.headers["Set-Cookie"].split(";")[0]
    for path in ("/", "/static/vendor/xterm/lib/xterm.js", "/static/vendor/novnc/core/rfb.js"):
        page = urllib.request.Request(f"{second}{path}", headers={"Cookie": cookie})
        with opener.open(page, timeout=30) as reply:
            assert reply.status == 200, path
            if path == "/":
                assert ">default</a>" in reply.read().decode()


def check_served(node: Node) -> None:
    """What the pods serve besides reconciling: metrics, consoles and the dashboard."""
    check_metrics(node)
    check_consoles_and_dashboard(node)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def test_install_enrolls_the_node_reconciles_fails_over_upgrades_and_uninstalls(
    node: Node,
) -> None:
    node.kubectl("label", "node", NODE_NAME, "stratus.io/hypervisor=true", "--overwrite")
    install = node.helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace",
                        *node.in_cluster_values(), "--wait", "--timeout=3m")  # fmt: skip
    assert "kubectl label node" in install.stdout  # NOTES.txt: what to apply first
    pods = operator_pods(node)
    assert len(pods) == 2 and all(p["status"]["phase"] == "Running" for p in pods)
    try:
        first = wait_until("a replica leads", lambda: leader(node))
    except AssertionError:
        logs = node.kubectl("logs", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator",
                            "--tail=30", "--prefix")  # fmt: skip
        raise AssertionError(logs) from None
    assert first.rpartition("_")[0] in {p["metadata"]["name"] for p in pods}

    # The agent pod enrolled (its readiness is its API, served once enrolled): the node's
    # Hypervisor registered itself, and the operator reaches it with the node's own token.
    [agent] = component_pods(node, "agent")
    assert agent["status"]["phase"] == "Running" and agent["spec"]["nodeName"] == NODE_NAME
    hypervisor = node.json("get", "hypervisor", NODE_NAME)
    assert hypervisor["spec"]["endpoint"] == f"https://{NODE_IP}:8441"
    assert hypervisor["spec"]["tokenSecretRef"]["name"] == f"stratus-agent-{NODE_NAME}"
    wait_until("Hypervisor Ready", lambda: ready(node, "hypervisor", NODE_NAME), timeout=60)
    # The operator reconciles with its chart's ServiceAccount alone, and boots through pods.
    node.kubectl("apply", "-n", "default", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "List",
        "items": basics(f"http://{NODE_IP}:{node.image_port}/img.qcow2")}))  # fmt: skip
    boot(node, "vm-1")
    check_served(node)

    # The leader dies (its process killed, not asked to stop): the standby takes over.
    leading = next(p for p in pods if p["metadata"]["name"] == first.rpartition("_")[0])
    container = leading["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    node.cloud.kubelet.ctr("tasks", "kill", "--signal", "SIGKILL", container, check=True)
    died = time.monotonic()
    # The standby, or the dead one's restarted container (a new candidate): whichever asks
    # first once the Lease ran out.
    second = wait_until("a new leader", lambda: (h := leader(node)) != first and h, timeout=30)
    took = time.monotonic() - died
    print(f"{second} took over {took:.1f} s after the leader's death")
    assert took < 15, took
    boot(node, "vm-2")

    upgrade = node.helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE,
                        *node.in_cluster_values(), "--set-json",
                        'operator.podAnnotations={"stratus.io/upgraded":"yes"}',
                        "--wait", "--timeout=3m")  # fmt: skip
    assert upgrade.returncode == 0
    pods = operator_pods(node)
    assert len(pods) == 2
    assert all(p["metadata"]["annotations"].get("stratus.io/upgraded") == "yes" for p in pods)
    assert running(node, "vm-1") and running(node, "vm-2")

    node.kubectl("delete", "instance", "vm-1", "vm-2", "-n", "default", "--timeout=60s")
    node.kubectl("delete", "network,image", "--all", "-n", "default", "--timeout=60s")

    # Every call the operator made with the chart's ServiceAccount was allowed (the API
    # server's audit log): a right missing from the ClusterRole shows here, not as a
    # retry loop in its log. The agent's ServiceAccount made none at all.
    logs = node.state / "logs"
    calls = audited(logs, f"system:serviceaccount:{NAMESPACE}:{RELEASE}-operator")
    denied = sorted({call.right for call in calls if call.code == 403})
    assert calls and not denied, denied
    print("operator calls:", ", ".join(sorted({call.right for call in calls})))
    assert audited(logs, f"system:serviceaccount:{NAMESPACE}:{RELEASE}-agent") == []

    node.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout=2m")
    assert operator_pods(node) == [] and component_pods(node, "agent") == []
    left = node.kubectl("get", "clusterrole,clusterrolebinding,role,rolebinding,serviceaccount,"
                        "deployment,daemonset,service,configmap,job", "-A", "-l",
                        f"app.kubernetes.io/instance={RELEASE}", "-o", "name")  # fmt: skip
    assert left == "", left
    # The pre-delete hook deleted the Hypervisor enrollment made (the operator still ran).
    assert node.kubectl("get", "hypervisors", "-o", "name") == ""
    # What enrollment made goes with the agents' DaemonSet that owns it.
    wait_until("enrollment's Secrets and ConfigMap collected", lambda: node.kubectl(
        "get", "secret,configmap", "-n", NAMESPACE, "-l", "stratus.io/enrolled=true",
        "-o", "name") == "", timeout=30)  # fmt: skip
    # CRDs stay, as Helm leaves a chart's crds/ (deleting them would delete every object).
    assert "instances.stratus.io" in node.kubectl("get", "crd", "-o", "name")
