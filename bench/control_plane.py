"""Benchmark: N Instances on the fake compute driver, through the real API server.

Prints a table: time until all Running, API requests per Instance (from kube-apiserver's
own apiserver_request_total), operator peak memory (VmHWM), CPU per process, and then what a
scrape of the operator's /metrics costs with every Instance in it. Not a test: run it by
hand, `.venv/bin/python bench/control_plane.py [--instances 1000 10000] [--repeat 3]`.

Several sizes, or repeats, run interleaved, each on a fresh control plane (1,000, 10,000,
1,000, ...), so a slow spell of the machine falls on both; each size's median run (by time
per Instance) is shown, sizes side by side, with every run's time per Instance and each
size's ratio to the first.

`--baseline` runs each size again beside it with the API server only: no operator and no
agent; the bench's own client makes each Instance Running with the writes the operator makes
for it (its finalizer, then its status). That is what the API server and etcd cost per
Instance at each size without Stratus, and the difference is the part Stratus adds.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import queue
import re
import resource
import secrets
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from stratus_devcloud import processes
from stratus_devcloud.controlplane import REPO_ROOT, LocalControlPlane, free_port

STRATUS = [sys.executable, "-m", "stratus_cli"]


def request_counts(plane: LocalControlPlane) -> Counter[str]:
    """kube-apiserver's own apiserver_request_total, by verb, resource and subresource."""
    with urllib.request.urlopen(f"{plane.server_url}/metrics", context=plane.ssl_context()) as r:
        text = r.read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            what = f"{labels['verb']} {labels['resource']}"
            if labels.get("subresource"):
                what += f"/{labels['subresource']}"
            counts[f"{what} {labels['code']}"] += int(float(line.rsplit(" ", 1)[1]))
    return counts


class _HeadOk(http.server.BaseHTTPRequestHandler):
    """An image source that answers the operator's probe (the fake agent downloads nothing)."""

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        return None


def image_server() -> int:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HeadOk)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1])


def instance(index: int) -> dict[str, object]:
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "Instance",
            "metadata": {"name": f"vm-{index:05d}", "namespace": "default"},
            "spec": {"cpu": 1, "memory": "128Mi", "boot": {"image": "img"},
                     "networks": [{"name": "net"}]}}  # fmt: skip


class Api:
    """Plain HTTPS to the API server with the admin's client certificate: one kept-alive
    connection per thread, so the bench's client is not the bottleneck."""

    def __init__(self, plane: LocalControlPlane) -> None:
        url = urllib.parse.urlsplit(plane.server_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.context = plane.ssl_context()
        self.local = threading.local()

    def connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context)

    def create(self, body: dict[str, object]) -> None:
        self._send("POST", INSTANCES, body, "application/json", 201)

    def patch(self, path: str, body: dict[str, object]) -> None:
        self._send("PATCH", path, body, "application/merge-patch+json", 200)

    def _send(
        self, method: str, path: str, body: dict[str, object], content_type: str, expected: int
    ) -> None:
        """On this thread's kept-alive connection."""
        connection = getattr(self.local, "connection", None) or self.connect()
        self.local.connection = connection
        connection.request(method, path, json.dumps(body).encode(), {"Content-Type": content_type})
        reply = connection.getresponse()
        text = reply.read()
        assert reply.status == expected, f"{method} {path}: HTTP {reply.status}: {text[:300]!r}"


class InstanceWatch:
    """The Instances' watch events, the watch opened again where the server ends it (from
    the last version seen, or from now when that is too old); counts its requests."""

    def __init__(self, api: Api) -> None:
        self.api, self.requests = api, 0

    def events(self, done: Callable[[], bool]) -> Iterator[dict[str, Any]]:
        """Every event until `done()`, asked after each."""
        version = ""
        while not done():
            self.requests += 1
            connection = self.api.connect()
            query = urllib.parse.urlencode(
                {"watch": "1", "resourceVersion": version, "timeoutSeconds": "300"}
            )
            connection.request("GET", f"{INSTANCES}?{query}")
            reply = connection.getresponse()
            assert reply.status == 200, f"watch: HTTP {reply.status}"
            while not done() and (line := reply.readline()):
                event = json.loads(line)
                if event["type"] == "ERROR":  # too old a version: start over
                    version = ""
                    break
                version = event["object"]["metadata"]["resourceVersion"]
                yield event
            connection.close()


INSTANCES = "/apis/stratus.io/v1alpha1/namespaces/default/instances"


def create_all(api: Api, count: int, running: Running, in_flight: int | None) -> None:
    """One POST per Instance from 16 threads; with `in_flight`, each waits while that many
    Instances are created and not Running yet."""

    def create(index: int) -> None:
        if in_flight is not None:
            running.wait_below(index - in_flight + 1)
        api.create(instance(index))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(count)))


class Running(threading.Thread):
    """Follows one watch (reconnecting if the server ends it) until `count` Instances are
    Running."""

    def __init__(self, api: Api, count: int) -> None:
        super().__init__(daemon=True)
        self.watch, self.count = InstanceWatch(api), count
        self.seen = threading.Condition()
        self.running = 0

    def wait_below(self, count: int) -> None:
        """Until at least `count` Instances are Running."""
        with self.seen:
            self.seen.wait_for(lambda: self.running >= count)

    def run(self) -> None:
        running: set[str] = set()
        for event in self.watch.events(lambda: len(running) >= self.count):
            obj = event["object"]
            if obj.get("status", {}).get("phase") == "Running":
                running.add(obj["metadata"]["name"])
                with self.seen:
                    self.running = len(running)
                    self.seen.notify_all()


class StandIn(threading.Thread):
    """The baseline's stand-in for the operator: for each Instance it sees created, the
    operator's two writes (finalizer, then a Running status of the operator's shape), from
    16 threads, so it is not the bottleneck."""

    def __init__(self, api: Api, count: int) -> None:
        super().__init__(daemon=True)
        self.api, self.count = api, count
        self.created: queue.Queue[tuple[int, str] | None] = queue.Queue()

    def run(self) -> None:
        with ThreadPoolExecutor(16) as pool:
            workers = [pool.submit(self._work) for _ in range(16)]
            for index, name in enumerate(self._created_names()):
                self.created.put((index, name))
            for _ in workers:
                self.created.put(None)
            for worker in workers:
                worker.result()

    def _created_names(self) -> Iterator[str]:
        seen: set[str] = set()
        for event in InstanceWatch(self.api).events(lambda: len(seen) >= self.count):
            if event["type"] == "ADDED":
                seen.add(name := event["object"]["metadata"]["name"])
                yield name

    def _work(self) -> None:
        while (item := self.created.get()) is not None:
            index, name = item
            self.api.patch(f"{INSTANCES}/{name}",
                           {"metadata": {"finalizers": ["stratus.io/finalizer"]}})  # fmt: skip
            self.api.patch(f"{INSTANCES}/{name}/status", {"status": running_status(index)})


def running_status(index: int) -> dict[str, object]:
    """What the operator writes when a guest runs (as `kubectl get -o json` shows it)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, object]:
        return {"type": type_, "status": status, "reason": reason, "message": message,
                "lastTransitionTime": now, "observedGeneration": 1}  # fmt: skip

    return {
        "phase": "Running", "node": "bench", "observedGeneration": 1,
        "conditions": [
            condition("Scheduled", "True", "Scheduled", "placed on bench"),
            condition("Ready", "True", "GuestRunning", "running on bench"),
            condition("Reconciling", "False", "Settled"),
            condition("Stalled", "False", "Settled"),
        ],
        "interfaces": [{"network": "net", "ip": f"10.64.{index // 250}.{index % 250 + 2}",
                        "mac": f"52:54:00:{index >> 16 & 255:02x}:{index >> 8 & 255:02x}:"
                               f"{index & 255:02x}"}],
    }  # fmt: skip


def rss_mib(pid: int, field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory of a live process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a live process, from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, seconds: float = 60.0) -> None:
    """Until the process is idle (under 5 % of a core for a second): a fresh API server
    builds its OpenAPI for the CRDs for a while, which must not count against a run."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        if cpu_seconds(pid) - before < 0.05:
            return


def kubectl(plane: LocalControlPlane, *args: str, input: str | None = None) -> str:
    return plane.kubectl_run(*args, input=input).stdout


def plane_pid(plane: LocalControlPlane, name: str) -> int:
    pid = processes.Tracked(name, plane.run_dir).pid()
    assert pid is not None, f"{name} is not running"
    return pid


def start_stack(
    work: Path, plane: LocalControlPlane, started: list[subprocess.Popen[bytes]]
) -> tuple[subprocess.Popen[bytes], ...]:
    """A fake-driver agent, its Hypervisor, a Network, an Image and the operator; returns
    (agent, operator) once the Hypervisor and the Image are Ready. Each process is added
    to `started` as soon as it runs, for the caller to stop."""
    token = work / "token"
    token.write_text(secrets.token_urlsafe(24))
    token.chmod(0o600)
    port, images = free_port(), image_server()
    agent_config = {"node_name": "bench", "token_file": str(token), "state_dir": str(work / "node"),
              "compute": "fake", "fake": {"cpu": 4096},
              "listen": {"host": "127.0.0.1", "port": port, "insecure": True}}  # fmt: skip
    (work / "agent.yaml").write_text(json.dumps(agent_config))
    agent = subprocess.Popen([*STRATUS, "agent", "--config", str(work / "agent.yaml")],
                             stdout=(work / "agent.log").open("w"),
                             stderr=subprocess.STDOUT)  # fmt: skip
    started.append(agent)
    kubectl(plane, "create", "namespace", "stratus-system")
    kubectl(plane, "-n", "stratus-system", "create", "secret", "generic", "agent-bench",
            f"--from-file=token={token}")  # fmt: skip
    items = [
        {"apiVersion": "stratus.io/v1alpha1", "kind": "Hypervisor", "metadata": {"name": "bench"},
         "spec": {"endpoint": f"http://127.0.0.1:{port}",
                  "tokenSecretRef": {"namespace": "stratus-system", "name": "agent-bench"}}},
        {"apiVersion": "stratus.io/v1alpha1", "kind": "Network", "metadata": {"name": "net",
         "namespace": "default"}, "spec": {"subnets": [{"cidr": "10.64.0.0/16"}]}},
        {"apiVersion": "stratus.io/v1alpha1", "kind": "Image", "metadata": {"name": "img",
         "namespace": "default"}, "spec": {"source": {"http": {"url": f"http://127.0.0.1:{images}/i"}}}},
    ]  # fmt: skip
    kubectl(plane, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                         "items": items}))  # fmt: skip
    operator = subprocess.Popen([*STRATUS, "operator", "--kubeconfig", str(plane.kubeconfig),
                                 "--allow-image-endpoint", f"127.0.0.1:{images}",
                                 "--metrics-host", "127.0.0.1",
                                 "--metrics-port", str(METRICS_PORT.setdefault(0, free_port()))],
                                stdout=(work / "operator.log").open("w"),
                                stderr=subprocess.STDOUT)  # fmt: skip
    started.append(operator)
    deadline = time.monotonic() + 60
    while "True" not in kubectl(plane, "get", "hypervisor", "bench", "-o",
                                "jsonpath={.status.conditions[0].status}"):  # fmt: skip
        assert time.monotonic() < deadline, "hypervisor never Ready"
        time.sleep(0.2)
    while kubectl(plane, "get", "image", "img", "-n", "default", "-o",
                  "jsonpath={.status.phase}") != "Ready":  # fmt: skip
        assert time.monotonic() < deadline, "image never Ready"
        time.sleep(0.2)
    return agent, operator


METRICS_PORT: dict[int, int] = {}  # the operator's, chosen at its start
SCRAPES = 5


def scrape_cost(plane: LocalControlPlane, operator: int) -> list[tuple[str, str]]:
    """What Prometheus' scrape of the operator's /metrics costs: the median time, the bytes,
    and the operator's CPU per scrape (its token reviewed once, then kept)."""
    kubectl(plane, "create", "serviceaccount", "scraper", "-n", "default")
    kubectl(plane, "create", "clusterrole", "scraper", "--verb=get", "--non-resource-url=/metrics")
    kubectl(plane, "create", "clusterrolebinding", "scraper", "--clusterrole=scraper",
            "--serviceaccount=default:scraper")  # fmt: skip
    token = kubectl(plane, "create", "token", "scraper", "-n", "default").strip()
    context = ssl._create_unverified_context()  # self-signed: no certificate given
    times, sizes = [], []
    cpu_before = cpu_seconds(operator)
    for _ in range(SCRAPES):
        request = urllib.request.Request(f"https://127.0.0.1:{METRICS_PORT[0]}/metrics",
                                         headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        began = time.monotonic()
        with urllib.request.urlopen(request, context=context, timeout=60) as reply:
            sizes.append(len(reply.read()))
        times.append(time.monotonic() - began)
    cpu = (cpu_seconds(operator) - cpu_before) / SCRAPES
    return [
        ("operator /metrics scrape (median)", f"{statistics.median(times) * 1000:.0f} ms"),
        ("operator /metrics size", f"{max(sizes) / 1024:.0f} KiB"),
        ("operator CPU per scrape", f"{cpu * 1000:.0f} ms"),
    ]


Rows = list[tuple[str, str]]


def measure(
    plane: LocalControlPlane, count: int, stack: dict[str, int], in_flight: int | None
) -> tuple[float, Rows]:
    """Create `count` Instances (at most `in_flight` not Running at once), wait until all
    are Running; (seconds per Instance, rows). `stack`: the operator's and the agent's
    pids; empty for the baseline, where the bench's stand-in makes them Running."""
    api = Api(plane)
    pids = {
        "kube-apiserver": plane_pid(plane, "kube-apiserver"),
        "etcd": plane_pid(plane, "etcd"),
        "kube-controller-manager": plane_pid(plane, "kube-controller-manager"),
        **stack,
    }
    operator, agent = stack.get("operator"), stack.get("agent (fake)")
    settle(pids["kube-apiserver"])
    before, cpu_before = request_counts(plane), {n: cpu_seconds(p) for n, p in pids.items()}
    idle_rss = rss_mib(operator, "VmRSS") if operator else 0.0
    own_cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    watcher = Running(api, count)
    watcher.start()
    stand_in = None if stack else StandIn(api, count)
    if stand_in is not None:
        stand_in.start()
    create_all(api, count, watcher, in_flight)
    created = time.monotonic() - start
    watcher.join()
    elapsed = time.monotonic() - start
    if stand_in is not None:
        stand_in.join()
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu["bench client"] = usage.ru_utime + usage.ru_stime - own_cpu.ru_utime - own_cpu.ru_stime
    requests = request_counts(plane) - before
    # The bench's own requests: one create per Instance, its watches, two scrapes; the
    # stand-in's are the operator's part in the baseline.
    own = count + watcher.watch.requests + 2
    total = sum(requests.values())
    rows = [
        (
            "create (all, 16 clients)",
            f"{created:.1f} s" + (f", at most {in_flight} not Running" if in_flight else ""),
        ),
        ("create -> all Running", f"{elapsed:.1f} s"),
        ("per Instance", f"{elapsed / count * 1000:.1f} ms"),
        ("API requests / Instance", f"{total / count:.2f} (with its create)"),
        ("  of which the operator (or its stand-in)", f"{(total - own) / count:.2f}"),
    ]
    if operator and agent:
        rows += [
            ("operator RSS before", f"{idle_rss:.0f} MiB"),
            ("operator peak RSS", f"{rss_mib(operator):.0f} MiB"),
            ("operator RSS when all Running", f"{rss_mib(operator, 'VmRSS'):.0f} MiB"),
            ("agent (fake) peak RSS", f"{rss_mib(agent):.0f} MiB"),
        ]
    rows += [(f"CPU / Instance: {name}", f"{seconds / count * 1000:.2f} ms")
             for name, seconds in cpu.items()]  # fmt: skip
    rows.append(("CPU / Instance: all of them", f"{sum(cpu.values()) / count * 1000:.2f} ms"))
    rows += [(f"requests: {what}", f"{n / count:.2f} / Instance")
             for what, n in requests.most_common() if n >= count / 100]  # fmt: skip
    if operator:
        rows += scrape_cost(plane, operator)
    return elapsed / count, rows


def run_once(
    count: int, in_flight: int | None, keep: bool = False, api_server_only: bool = False
) -> tuple[float, Rows]:
    """One run on a fresh control plane and stack (none with `api_server_only`), all of it
    stopped afterwards (and its files removed, unless `keep`: the logs)."""
    work = Path(tempfile.mkdtemp(prefix="stratus-bench-"))
    plane = LocalControlPlane(work / "cluster")
    started: list[subprocess.Popen[bytes]] = []
    try:
        plane.up(crd_dir=REPO_ROOT / "crds")
        stack: dict[str, int] = {}
        if not api_server_only:
            agent, operator = start_stack(work, plane, started)
            stack = {"operator": operator.pid, "agent (fake)": agent.pid}
        return measure(plane, count, stack, in_flight)
    finally:  # also when the stack never came up: nothing of it may outlive the bench
        for process in started:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        plane.down()
        if keep:
            print(f"kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


Run = tuple[float, Rows]
Column = tuple[int, bool]  # (Instances, API server only)


def label(column: Column) -> str:
    count, api_server_only = column
    return f"{count}, API server only" if api_server_only else f"{count} Instances"


def table(columns: list[Column], runs: dict[Column, list[Run]]) -> list[list[str]]:
    """Each column's median run, side by side, with every run's time per Instance, the
    ratio of the median to the first size's (of the same kind), and the median of the
    ratios of runs made back to back; with a baseline, the part Stratus adds: full minus
    API server only, per size."""
    medians = {c: sorted(runs[c], key=lambda run: run[0])[(len(runs[c]) - 1) // 2] for c in columns}
    first = {only: next(c for c in columns if c[1] == only) for _, only in columns}
    names = list(dict.fromkeys(name for c in columns for name, _ in medians[c][1]))
    lines = [["metric", *(label(c) for c in columns)]]
    for index, name in enumerate(names):
        lines.append([name, *(dict(medians[c][1]).get(name, "-") for c in columns)])
        if index == 2 and len(columns) + max(len(r) for r in runs.values()) > 2:
            times = {c: [t for t, _ in runs[c]] for c in columns}
            lines += spread(columns, times, {c: medians[c][0] for c in columns}, first)
    full = [c for c in columns if not c[1]]
    if len(full) < len(columns):  # a baseline ran: Stratus's part, full minus API server only
        added = {c: [t - b for (t, _), (b, _) in zip(runs[c], runs[c[0], True], strict=False)]
                 for c in full}  # fmt: skip
        middle = {c: medians[c][0] - medians[c[0], True][0] for c in full}
        bare = ["-"] * (len(columns) - len(full))  # full columns come first
        lines.append(["Stratus's part per Instance (full - API server only)",
                      *(f"{middle[c] * 1000:.1f} ms" for c in full), *bare])  # fmt: skip
        lines += [[*line, *bare] for line in spread(full, added, middle, {False: full[0]})]
    return lines


def spread(
    columns: list[Column], times: dict[Column, list[float]], middle: dict[Column, float],
    first: dict[bool, Column],
) -> list[list[str]]:  # fmt: skip
    """Every run's value, the median's ratio to the first size's, and the median ratio of
    runs made back to back (run i of each size: free of the machine's drift)."""
    lines = [["  each run", *(", ".join(f"{t * 1000:.1f}" for t in times[c]) for c in columns)]]
    lines.append(["  median / first size's",
                  *(f"{middle[c] / middle[first[c[1]]]:.2f}" for c in columns)])  # fmt: skip
    pairs = {c: sorted(t / b for t, b in zip(times[c], times[first[c[1]]], strict=False))
             for c in columns}  # fmt: skip
    lines.append(["  run i / first size's run i, median", *(
        f"{statistics.median(pairs[c]):.2f} ({', '.join(f'{r:.2f}' for r in pairs[c])})"
        for c in columns)])  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, nargs="+", default=[1000])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each size, interleaved")
    parser.add_argument("--keep", action="store_true", help="keep each run's files and logs")
    parser.add_argument(
        "--in-flight", type=int, default=None,
        help="create no more while this many Instances are not Running yet (default: all at "
        "once); the same number at every size gives every size the same backlog",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", action="store_true",
        help="after each run, the same size with the API server only: no operator or agent, "
        "the bench making each Instance Running with the operator's writes (finalizer, status)",
    )  # fmt: skip
    args = parser.parse_args()
    kinds = [False, True] if args.baseline else [False]
    columns = [(count, only) for only in kinds for count in args.instances]
    runs: dict[Column, list[Run]] = {c: [] for c in columns}
    for _ in range(args.repeat):
        for count in args.instances:
            for only in kinds:
                runs[count, only].append(run_once(count, args.in_flight, args.keep, only))
                print(f"{label((count, only))}: {runs[count, only][-1][0] * 1000:.1f} ms per "
                      "Instance", file=sys.stderr, flush=True)  # fmt: skip
    lines = table(columns, runs)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


if __name__ == "__main__":
    main()
