"""Several nodes on one machine, for real: `stratus dev up --nodes 3` gives three Hypervisors,
each with its own agent, bridges, network namespace, Open vSwitch and tunnel endpoint. Guests
of one overlay Network on two nodes talk over a real VXLAN tunnel whose counters move; a
Network with the same CIDR stays apart; a node hosting none of a Network's guests never
receives its frames; each agent lists only its own guests.

Its own cloud (not the shared e2e one): guests here must land on chosen nodes.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from allinone_kit import Cloud, boot_marker, small_instance
from testsupport import REPO_ROOT, wait_until

NODES = ("local", "local-2", "local-3")
PING_OK = "PING-OK"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    cloud = Cloud(tmp_path_factory.mktemp("nodes"))
    up = cloud.stratus("dev", "up", "--nodes", "3")
    try:
        assert up.returncode == 0, up.stderr
        cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples" / "image.yaml"),
                      "-f", str(REPO_ROOT / "examples" / "instancetype.yaml"))  # fmt: skip
        yield cloud
    finally:
        down = cloud.stratus("dev", "down")
        assert down.returncode == 0, down.stderr
    assert cloud.dev.running() == [] and not cloud.dev.node_dir.exists()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout  # fmt: skip
    assert cloud.dev.simnodes.prefix not in namespaces


def network(name: str) -> dict[str, Any]:
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "Network", "metadata": {"name": name},
            "spec": {"subnets": [{"cidr": "10.30.0.0/24", "gateway": "10.30.0.1"}]}}  # fmt: skip


def on(
    node: str, name: str, net: str, ip: str, user_data: str = "#!/bin/sh\ntrue\n"
) -> dict[str, Any]:
    return small_instance(name, networks=[{"name": net, "ip": ip}], userData=user_data,
                          nodeSelector={"kubernetes.io/hostname": node})  # fmt: skip


def pinger(target: str) -> str:
    """Wait for the first answer (the target may still boot), then ping for real."""
    return ("#!/bin/sh\n"
            f"i=0; until ping -c 1 -W 1 {target} >/dev/null 2>&1; do\n"
            '  i=$((i + 1)); [ "$i" -lt 90 ] || break\n'
            "done\n"
            f"ping -c 3 -W 2 {target} && echo {PING_OK}\n")  # fmt: skip


def test_three_nodes_report_their_own_tunnel_endpoints(cloud: Cloud) -> None:
    def endpoints() -> dict[str, str | None]:
        hypervisors = json.loads(cloud.kubectl("get", "hypervisors", "-o", "json"))["items"]
        return {h["metadata"]["name"]: h.get("status", {}).get("tunnelEndpoint")
                for h in hypervisors}  # fmt: skip

    found = wait_until("every node's endpoint", lambda: None not in (e := endpoints()).values()
                       and e, 60)  # fmt: skip
    assert sorted(found) == sorted(NODES)
    assert len(set(found.values())) == 3, found
    sims = [cloud.dev.simnodes.node(index) for index in (1, 2, 3)]
    assert [found[name] for name in NODES] == [sim.local_ip for sim in sims]


def tunnel_bridge(cloud: Cloud, index: int) -> tuple[list[str], dict[str, dict[str, int]]]:
    """Node `index`'s tunnel bridge, from the node's own Open vSwitch: its flows, and each
    VXLAN port's statistics by the port's remote endpoint."""
    sim = cloud.dev.simnodes.node(index)
    flows = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", f"unix:{sim.rundir}/br-tun.mgmt"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()[1:]  # fmt: skip
    listed = subprocess.run(
        ["ovs-vsctl", f"--db={sim.ovsdb}", "--format=json",
         "--columns=type,options,statistics", "list", "Interface"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    ports = {}
    for kind, options, stats in json.loads(listed)["data"]:
        if kind == "vxlan":  # OVSDB JSON maps are ["map", [[key, value], ...]]
            ports[dict(options[1])["remote_ip"]] = dict(stats[1])
    return flows, ports


def packets(flows: list[str], *parts: str) -> int:
    """n_packets of the one flow whose text holds every part."""
    [flow] = [f for f in flows if all(part in f for part in parts)]
    return int(flow.split("n_packets=")[1].split(",")[0])


def test_an_overlay_spans_nodes_over_vxlan_and_networks_stay_apart(cloud: Cloud) -> None:
    """blue on local and local-2, red (same CIDR) on local and local-3: guests of a Network
    reach each other across nodes, over tunnels whose counters move; a red guest cannot
    reach a blue address; local-3 never receives a blue frame; a guest's DHCP answer is its
    reserved address; deleting everything leaves no tunnel, flow, namespace or dnsmasq."""
    cloud.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
        "items": [network("blue"), network("red")]}))  # fmt: skip
    blue_b = pinger("10.30.0.10") + (
        # DHCP only: drop the seed's address and ask for one.
        "ip addr flush dev eth0\n"
        "udhcpc -i eth0 -n -q -t 5 -T 2 -s /etc/udhcpc.script && echo DHCP-OK\n"
    )
    red_d = ("#!/bin/sh\n"
             "ping -c 3 -W 2 10.30.0.10 >/dev/null 2>&1 || echo ISOLATED\n"
             + pinger("10.30.0.12").removeprefix("#!/bin/sh\n"))  # fmt: skip
    guests = [
        on("local", "blue-a", "blue", "10.30.0.10"),
        on("local-2", "blue-b", "blue", "10.30.0.11", blue_b),
        on("local-3", "red-c", "red", "10.30.0.12"),
        on("local", "red-d", "red", "10.30.0.13", red_d),
    ]
    cloud.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": guests}))  # fmt: skip
    for name in ("blue-b", "red-d"):
        console = boot_marker(cloud, name, "STRATUS-GUEST: user-data exit=")
        assert f"\n{PING_OK}\n" in console, console[-2000:]
    assert "udhcpc: lease of 10.30.0.11 obtained" in cloud.console("blue-b")
    assert "DHCP-OK" in cloud.console("blue-b")
    assert "ISOLATED" in cloud.console("red-d"), cloud.console("red-d")[-2000:]
    for name, node in (("blue-a", "local"), ("blue-b", "local-2"), ("red-c", "local-3")):
        assert cloud.instance(name)["status"]["node"] == node
    # One libvirtd, three agents: each reports its own guests only.
    for node, count in (("local", 2), ("local-2", 1), ("local-3", 1)):
        wait_until(f"{node} reporting {count} guests", lambda n=node, c=count: f"; {c} guests" in
                   cloud.kubectl("get", "hypervisor", n, "-o",
                                 'jsonpath={.status.conditions[?(@.type=="Ready")].message}'),
                   30)  # fmt: skip

    # Node 1 talks to node 2 (blue) and to node 3 (red) through one VXLAN port each, and
    # both moved packets; node 3 has no port to node 2 (they share no Network).
    endpoints = {h["metadata"]["name"]: h["status"]["tunnelEndpoint"] for h in json.loads(
        cloud.kubectl("get", "hypervisors", "-o", "json"))["items"]}  # fmt: skip
    _, ports_1 = tunnel_bridge(cloud, 1)
    assert sorted(ports_1) == sorted([endpoints["local-2"], endpoints["local-3"]]), ports_1
    assert all(s["rx_packets"] > 0 and s["tx_packets"] > 0 for s in ports_1.values()), ports_1
    flows_3, ports_3 = tunnel_bridge(cloud, 3)
    assert list(ports_3) == [endpoints["local"]], ports_3
    # Node 1 floods blue only to node 2: node 3 never got a frame of a VNI it does not
    # serve (they would meet table 4's drop), and has no flow for blue at all.
    assert packets(flows_3, "table=4", "priority=0 actions=drop") == 0, flows_3
    blue_vni = int(cloud.kubectl("get", "network", "blue",
                                 "-o", "jsonpath={.status.segmentationId}"))  # fmt: skip
    assert not [f for f in flows_3 if f"tun_id={hex(blue_vni)}" in f], flows_3
    assert packets(flows_3, "table=4", "priority=1") > 0  # red's frames did arrive

    # Everything goes: no tunnel port, Network flow, DHCP namespace or dnsmasq is left.
    for guest in guests:
        cloud.kubectl("delete", "instance", guest["metadata"]["name"], "--timeout=120s")
    cloud.kubectl("delete", "network", "blue", "red", "--timeout=120s")

    bridges = [node.bridge for node in cloud.dev.nodes]

    def all_gone() -> bool:
        leftovers = []
        for index in (1, 2, 3):
            flows, ports = tunnel_bridge(cloud, index)
            leftovers += list(ports) + [f for f in flows if "tun_id" in f]
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                    check=True).stdout.split()  # fmt: skip
        leftovers += [n for n in namespaces if any(n.startswith(f"dhcp-{b}-") for b in bridges)]
        dnsmasq = subprocess.run(["pgrep", "-f", f"dnsmasq.*{cloud.dev.node_dir}"],
                                 capture_output=True, text=True, check=False).stdout  # fmt: skip
        return not leftovers and not dnsmasq.strip()

    wait_until("no tunnel, flow, DHCP namespace or dnsmasq left", all_gone, 60)
