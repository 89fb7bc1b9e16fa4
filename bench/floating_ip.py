"""Benchmark: ping RTT and TCP connect time to a guest through its floating IP, against its
fixed IP on the same node; and how long a security group rule takes to apply to the running
guest.

Runs against the all-in-one that `./hack/demo` leaves running (Instance `demo` with
FloatingIP `demo` through Router `edge`). The floating path: from the host over the
external bridge into the Router's namespace, DNAT, out of its port on the integration
bridge to the guest. The fixed path: from inside the Router's namespace straight to the
guest's fixed address (the nearest place to the guest with a route to it, on the same
node). TCP connect is to the guest's sshd (port 22), timed in-process with a fresh socket
per connection. Not a test: run it by hand, `.venv/bin/python bench/floating_ip.py
[--count 50]`. No target: TCG guest, userspace OVS datapath; the ratio is what the NAT hop
costs.

Rule latency: the demo's group `default` lets ping in; the bench removes that rule and adds
it back, `--rounds` times, and times each change from the API server's answer to the first
echo that is no longer answered (removed) or answered again (added), each echo a new
connection in conntrack (so existing connections, which a rule removal leaves be, do not
count), sent every 60 ms or so. What it
covers: the operator's group daemon (one round per second at most), the PUT to the node and
the node's flow table update.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

from stratus_devcloud.allinone import DevCloud
from stratus_devcloud.controlplane import default_state_dir

SUMMARY = re.compile(r"round-trip min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+) ms")
CONNECT = """
import socket, sys, time
found = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    with socket.create_connection((sys.argv[1], 22), timeout=10):
        found.append((time.perf_counter() - start) * 1000)
print(" ".join(f"{ms:.3f}" for ms in found))
"""


def kubectl(cloud: DevCloud, *args: str) -> str:
    return cloud.plane.kubectl_run(*args, check=True).stdout


def ping(prefix: list[str], address: str, count: int) -> tuple[float, float, float]:
    argv = [*prefix, "busybox", "ping", "-c", str(count), "-i", "0.2", address]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=600).stdout
    found = SUMMARY.search(out)
    assert found, out
    low, avg, high = (float(v) for v in found.groups())
    return low, avg, high


def connect(prefix: list[str], address: str, count: int) -> tuple[float, float, float]:
    argv = [*prefix, sys.executable, "-c", CONNECT, address, str(count)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=600).stdout
    times = [float(v) for v in out.split()]
    return min(times), statistics.median(times), max(times)


def echo(address: str, timeout: float = 0.05) -> bool:
    """One ICMP echo with an identifier of its own (so a connection of its own in
    conntrack, never one a rule let in before), answered within `timeout`."""
    ident = random.randrange(1, 0xFFFF)
    # An even length: the checksum sums 16-bit words.
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"stratus-bench."
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total >> 16) + (total & 0xFFFF)
    checksum = ~(total + (total >> 16)) & 0xFFFF
    packet = header[:2] + struct.pack("!H", checksum) + header[4:]
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.sendto(packet, (address, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, (sender, _) = sock.recvfrom(2048)
            except TimeoutError:
                return False
            icmp = data[(data[0] & 0x0F) * 4 :]
            if sender == address and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
                return True
    return False


def until_ping(address: str, wanted: bool, timeout: float = 30) -> float:
    """Seconds until an echo sent then is answered (`wanted`), or no longer answered; each
    echo waits 50 ms, so the resolution is about that."""
    start = time.monotonic()
    while (sent := time.monotonic()) - start < timeout:
        if echo(address) == wanted:
            return sent - start
        time.sleep(0.01)
    raise TimeoutError(f"ping to {address} still {'silent' if wanted else 'answered'}")


def rule_latency(cloud: DevCloud, address: str, rounds: int) -> tuple[list[float], list[float]]:
    """(seconds to apply a removed rule, seconds to apply an added one), per round."""
    group = json.loads(kubectl(cloud, "get", "securitygroup", "default", "-o", "json"))
    rules = group["spec"]["rules"]
    icmp = next(i for i, r in enumerate(rules) if r.get("protocol") == "icmp")
    removed, added = [], []
    patch = json.dumps([{"op": "remove", "path": f"/spec/rules/{icmp}"}])
    back = json.dumps([{"op": "add", "path": f"/spec/rules/{icmp}", "value": rules[icmp]}])
    for _ in range(rounds):
        kubectl(cloud, "patch", "securitygroup", "default", "--type=json", "-p", patch)
        try:
            removed.append(until_ping(address, wanted=False))
        finally:  # the demo keeps its rule whatever happens
            kubectl(cloud, "patch", "securitygroup", "default", "--type=json", "-p", back)
        added.append(until_ping(address, wanted=True))
    return removed, added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--state-dir", default=str(default_state_dir()))
    args = parser.parse_args()
    cloud = DevCloud(Path(args.state_dir))
    floating = json.loads(kubectl(cloud, "get", "floatingip", "demo", "-o", "json"))["status"]
    router = json.loads(kubectl(cloud, "get", "router", "edge", "-o", "json"))
    namespace = f"router-{cloud.bridge}-{router['metadata']['uid']}"
    inside = ["ip", "netns", "exec", namespace]
    address, fixed = floating["address"], floating["fixedAddress"]
    ping([], address, 3)  # warm the neighbour tables and conntrack
    ping(inside, fixed, 3)
    rows = [
        ("ping RTT (min/avg/max)", ping([], address, args.count),
         ping(inside, fixed, args.count)),
        ("TCP connect :22 (min/median/max)", connect([], address, args.count),
         connect(inside, fixed, args.count)),
    ]  # fmt: skip
    print(f"demo: floating {address} -> fixed {fixed}; {args.count} samples each (ms)")
    print("| measure | floating IP, from the host | fixed IP, from the router | ratio (avg) |")
    print("|---|---|---|---|")
    for name, through, direct in rows:
        print(f"| {name} | {_ms(through)} | {_ms(direct)} | {through[1] / direct[1]:.2f} |")
    removed, added = rule_latency(cloud, address, args.rounds)
    print(f"\nsecurity group rule (ingress icmp) on the running guest; {args.rounds} rounds (s)")
    print("| change | min | median | max |")
    print("|---|---|---|---|")
    for name, times in (("rule added: ping answers", added), ("rule removed: ping stops", removed)):
        low, mid, high = min(times), statistics.median(times), max(times)
        print(f"| {name} | {low:.2f} | {mid:.2f} | {high:.2f} |")


def _ms(values: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
