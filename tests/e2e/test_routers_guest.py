"""Routers and floating IPs with real guests on the all-in-one: guests of two Networks
joined by a Router reach each other through it, a guest of a Network it does not join
reaches neither, and a guest reaches the host's external network through the Router's SNAT
(the host has no route back to the guests' subnets: an answer proves the source was
rewritten). From the host, ssh reaches a guest at its floating IP, and stops reaching it
when the FloatingIP is deleted. Deleting the Router leaves no namespace or port on the
node. Security groups let in what their rules allow and replies, nothing else, and follow
rule changes live. A guest resolves the names of its Network's Instances."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from allinone_kit import Cloud, boot_marker, small_instance
from testsupport import REPO_ROOT, wait_until

DONE = "STRATUS-GUEST: user-data exit="


def network(name: str, cidr: str, gateway: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "Network", "metadata": {"name": name},
            "spec": {"subnets": [{"cidr": cidr, "gateway": gateway}], **spec}}  # fmt: skip


def guest(name: str, net: str, ip: str, script: str) -> dict[str, Any]:
    return small_instance(name, networks=[{"name": net, "ip": ip}],
                          userData="#!/bin/sh\n" + script)  # fmt: skip


def reach(target: str, mark: str, tries: int = 90) -> str:
    """Wait for the first answer (the target may still boot), then ping for real."""
    return (f"i=0; until ping -c 1 -W 1 {target} >/dev/null 2>&1; do\n"
            f'  i=$((i + 1)); [ "$i" -lt {tries} ] || break\n'
            "done\n"
            f"ping -c 3 -W 2 {target} >/dev/null 2>&1 && echo {mark}\n")  # fmt: skip


def never(target: str, mark: str) -> str:
    return f"ping -c 3 -W 2 {target} >/dev/null 2>&1 || echo {mark}\n"


def apply(cloud: Cloud, *items: dict[str, Any]) -> None:
    cloud.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": list(items)}))  # fmt: skip


@pytest.fixture(scope="module")
def public(cloud: Cloud) -> Iterator[str]:
    """The external Network on the host's external network (one flat Network per physical
    network: the module's tests share it); the host's address on it."""
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples" / "image.yaml"),
                  "-f", str(REPO_ROOT / "examples" / "instancetype.yaml"))  # fmt: skip
    outside = cloud.dev.external_gateway
    apply(cloud, network("rt-public", str(outside.network), str(outside.ip), type="flat",
                         physicalNetwork="external", external=True))  # fmt: skip
    yield str(outside.ip)
    cloud.kubectl("delete", "network", "rt-public", "--timeout=120s")


def test_a_router_joins_two_networks_and_leads_out_with_snat(cloud: Cloud, public: str) -> None:
    host = public
    cloud.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
        "items": [
            network("rt-web", "10.71.0.0/24", "10.71.0.1"),
            network("rt-db", "10.72.0.0/24", "10.72.0.1"),
            network("rt-apart", "10.73.0.0/24", "10.73.0.1"),
            {"apiVersion": "stratus.io/v1alpha1", "kind": "Router", "metadata": {"name": "edge"},
             "spec": {"networks": [{"name": "rt-web"}, {"name": "rt-db"}],
                      "externalGateway": {"network": "rt-public"}}},
        ]}))  # fmt: skip
    cloud.kubectl("wait", "--for=condition=Ready", "router/edge", "--timeout=120s")
    router = json.loads(cloud.kubectl("get", "router", "edge", "-o", "json"))
    external_address = router["status"]["externalAddress"]

    guests = [
        guest("rt-a", "rt-web", "10.71.0.10",
              reach("10.72.0.10", "ROUTED") + reach(host, "SNAT-OK", tries=5)
              + never("10.73.0.10", "APART")),
        guest("rt-b", "rt-db", "10.72.0.10", reach("10.71.0.10", "ROUTED")),
        guest("rt-c", "rt-apart", "10.73.0.10", never("10.71.0.10", "ISOLATED")),
    ]  # fmt: skip
    cloud.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": guests}))  # fmt: skip
    consoles = {name: boot_marker(cloud, name, DONE) for name in ("rt-a", "rt-b", "rt-c")}
    assert "\nROUTED\n" in consoles["rt-a"], consoles["rt-a"][-2000:]
    assert "\nROUTED\n" in consoles["rt-b"], consoles["rt-b"][-2000:]
    assert "\nSNAT-OK\n" in consoles["rt-a"], consoles["rt-a"][-2000:]
    assert "\nAPART\n" in consoles["rt-a"], consoles["rt-a"][-2000:]
    assert "\nISOLATED\n" in consoles["rt-c"], consoles["rt-c"][-2000:]
    # The host answers the Router's external address itself (the connected route).
    assert subprocess.run(["busybox", "ping", "-c", "1", "-W", "2", external_address],
                          capture_output=True, check=False).returncode == 0  # fmt: skip

    uid = router["metadata"]["uid"]
    namespace = f"router-{cloud.dev.bridge}-{uid}"
    assert namespace in netns()
    cloud.kubectl("delete", "router", "edge", "--timeout=60s")
    wait_until("the router's namespace gone", lambda: namespace not in netns(), timeout=30)
    ports = subprocess.run(["ovs-vsctl", "--timeout=10", "--bare", "--columns=name", "find",
                            "Interface", f"external_ids:stratus-router={uid}"],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert ports.strip() == ""
    cloud.kubectl("delete", "instance", "rt-a", "rt-b", "rt-c", "--timeout=120s")
    cloud.kubectl("delete", "network", "rt-web", "rt-db", "rt-apart", "--timeout=120s")


def ssh(
    key: Path, address: str, command: str, timeout: float = 10
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o",
         "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o",
         f"ConnectTimeout={int(timeout)}", "-o", "LogLevel=ERROR", f"root@{address}", command],
        capture_output=True, text=True, timeout=timeout + 20, check=False,
    )  # fmt: skip


def test_ssh_reaches_a_guest_at_its_floating_ip_until_the_floating_ip_goes(
    cloud: Cloud, public: str, tmp_path: Path
) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    vm = guest("fip-vm", "fip-web", "10.74.0.10", "true\n")
    vm["spec"]["sshKeys"] = [key.with_suffix(".pub").read_text().strip()]
    vm["spec"]["networks"][0]["securityGroups"] = ["fip-ssh"]
    # No SNAT on the Router: the guest's way out is its floating address's own.
    apply(cloud, network("fip-web", "10.74.0.0/24", "10.74.0.1"),
          security_group("fip-ssh", {"direction": "ingress", "protocol": "tcp", "port": 22},
                         {"direction": "egress"}),
          {"apiVersion": "stratus.io/v1alpha1", "kind": "Router", "metadata": {"name": "fip-edge"},
           "spec": {"networks": [{"name": "fip-web"}],
                    "externalGateway": {"network": "rt-public", "snat": False}}},
          vm,
          {"apiVersion": "stratus.io/v1alpha1", "kind": "FloatingIP",
           "metadata": {"name": "fip-vm"},
           "spec": {"network": "rt-public", "instance": "fip-vm"}})  # fmt: skip
    cloud.kubectl("wait", "--for=condition=Ready", "floatingip/fip-vm", "--timeout=180s")
    floating = json.loads(cloud.kubectl("get", "floatingip", "fip-vm", "-o", "json"))["status"]
    assert floating["fixedAddress"] == "10.74.0.10" and floating["router"] == "fip-edge"
    address = floating["address"]
    boot_marker(cloud, "fip-vm", "STRATUS-GUEST: sshd started keys=1")

    answer = wait_until("ssh to the floating IP", lambda: (
        r := ssh(key, address, f"echo hello-from-$(hostname); ping -c 1 -W 2 {public} >/dev/null "
                 "&& echo out-ok")).returncode == 0 and r, timeout=120)  # fmt: skip
    assert "hello-from-fip-vm" in answer.stdout, answer
    assert "out-ok" in answer.stdout, answer  # SNAT to the floating address, no router SNAT

    uid = json.loads(cloud.kubectl("get", "router", "fip-edge", "-o", "json"))["metadata"]["uid"]
    namespace = f"router-{cloud.dev.bridge}-{uid}"
    cloud.kubectl("delete", "floatingip", "fip-vm", "--timeout=60s")
    assert address not in nat(namespace)
    gone = ssh(key, address, "echo still-here", timeout=5)
    assert gone.returncode != 0 and "still-here" not in gone.stdout, gone
    cloud.kubectl("delete", "router", "fip-edge", "--timeout=60s")
    cloud.kubectl("delete", "instance", "fip-vm", "--timeout=120s")
    cloud.kubectl("delete", "sg", "fip-ssh", "--timeout=60s")
    cloud.kubectl("delete", "network", "fip-web", "--timeout=120s")


def nat(namespace: str) -> str:
    return subprocess.run(["ip", "netns", "exec", namespace, "iptables", "-t", "nat", "-S"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip


def netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def security_group(name: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "SecurityGroup",
            "metadata": {"name": name}, "spec": {"rules": list(rules)}}  # fmt: skip


def host_pings(address: str, count: int = 1) -> bool:
    return subprocess.run(["busybox", "ping", "-c", str(count), "-W", "1", address],
                          capture_output=True, check=False).returncode == 0  # fmt: skip


def neighbour(namespace: str, address: str) -> str:
    """The router's neighbour entry for `address`: it asks for it only after a packet from
    that address reached it (to send the answer back)."""
    return subprocess.run(["ip", "netns", "exec", namespace, "ip", "neigh", "show", address],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip


def test_security_groups_filter_guests_statefully_and_follow_live_rule_changes(
    cloud: Cloud, public: str, tmp_path: Path
) -> None:
    """sg-server is in group sg-ssh (ssh in, anything out); sg-client is in the namespace's
    group default. From the client, tcp/22 to the server answers (the SSH banner: replies
    flow) and icmp does not; from the host, ssh to the server's floating IP works and ping
    does not, until an icmp rule is added to the running guest's group. The server cannot
    send from an address it does not own."""
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    server = small_instance("sg-server", networks=[
        {"name": "sg-net", "ip": "10.75.0.10", "securityGroups": ["sg-ssh"]}])  # fmt: skip
    server["spec"]["sshKeys"] = [key.with_suffix(".pub").read_text().strip()]
    client = guest("sg-client", "sg-net", "10.75.0.20",
                   "i=0; until echo | nc -w 3 10.75.0.10 22 | grep -q SSH-; do\n"
                   '  i=$((i + 1)); [ "$i" -lt 60 ] || break; sleep 1\n'
                   "done\n"
                   "echo | nc -w 3 10.75.0.10 22 | grep -q SSH- && echo TCP22-OK\n"
        # Names of the Network's Instances, from the node's DHCP server (the seed's first
        # resolver), short and in the namespace's zone.
        "nslookup sg-server | grep -q 'Address.*10.75.0.10' && echo DNS-SHORT-OK\n"
        "nslookup sg-server.default.stratus.internal | grep -q 'Address.*10.75.0.10'"
        " && echo DNS-ZONE-OK\n"
                   + never("10.75.0.10", "ICMP-DENIED"))  # fmt: skip
    apply(cloud, network("sg-net", "10.75.0.0/24", "10.75.0.1"),
          security_group("sg-ssh",
                         {"direction": "ingress", "protocol": "tcp", "port": 22},
                         {"direction": "egress"}),
          {"apiVersion": "stratus.io/v1alpha1", "kind": "Router", "metadata": {"name": "sg-edge"},
           "spec": {"networks": [{"name": "sg-net"}],
                    "externalGateway": {"network": "rt-public", "snat": False}}},
          server, client,
          {"apiVersion": "stratus.io/v1alpha1", "kind": "FloatingIP",
           "metadata": {"name": "sg-server"},
           "spec": {"network": "rt-public", "instance": "sg-server"}})  # fmt: skip
    cloud.kubectl("wait", "--for=condition=Ready", "floatingip/sg-server", "--timeout=180s")
    address = json.loads(cloud.kubectl("get", "fip", "sg-server", "-o", "json"))["status"][
        "address"
    ]
    boot_marker(cloud, "sg-server", "STRATUS-GUEST: sshd started keys=1")

    console = boot_marker(cloud, "sg-client", DONE)
    assert "\nTCP22-OK\n" in console, console[-2000:]
    assert "\nICMP-DENIED\n" in console, console[-2000:]
    assert "\nDNS-SHORT-OK\n" in console, console[-2000:]
    assert "\nDNS-ZONE-OK\n" in console, console[-2000:]
    answer = wait_until("ssh to the server's floating IP", lambda: (
        r := ssh(key, address, "cat /proc/sys/kernel/random/boot_id")).returncode == 0 and r,
        timeout=120)  # fmt: skip
    boot_id = answer.stdout.strip()
    assert not host_pings(address, count=2)  # icmp is not in sg-ssh

    # Status counts the NICs each group applies to; default was made for the client.
    ssh_group = json.loads(cloud.kubectl("get", "sg", "sg-ssh", "-o", "json"))
    assert (ssh_group["status"]["portCount"], ssh_group["status"]["nodeCount"]) == (1, 1)
    default = json.loads(cloud.kubectl("get", "sg", "default", "-o", "json"))
    assert default["status"]["portCount"] >= 1

    # A rule added live: the running guest answers ping within seconds, not restarted.
    cloud.kubectl("patch", "sg", "sg-ssh", "--type=json", "-p", json.dumps([
        {"op": "add", "path": "/spec/rules/-",
         "value": {"direction": "ingress", "protocol": "icmp"}}]))  # fmt: skip
    wait_until("ping through the new icmp rule", lambda: host_pings(address), timeout=30)
    after = ssh(key, address, "cat /proc/sys/kernel/random/boot_id")
    assert after.stdout.strip() == boot_id, after

    # Removing it cuts the pings it let in, not only new ones: one ping, one connection.
    removing_cuts_a_running_ping(cloud, address, tmp_path / "ping.log")

    # Anti-spoofing: from an address the server does not own, nothing reaches the router
    # (it would look up the sender to answer); from its own, it does.
    uid = json.loads(cloud.kubectl("get", "router", "sg-edge", "-o", "json"))["metadata"]["uid"]
    namespace = f"router-{cloud.dev.bridge}-{uid}"
    spoof = ssh(
        key,
        address,
        "ip addr add 10.75.0.99/24 dev eth0; "
        "ping -c 2 -W 1 -I 10.75.0.99 10.75.0.1; ping -c 1 -W 2 10.75.0.1 && echo own-ok",
    )
    assert "own-ok" in spoof.stdout, spoof
    assert neighbour(namespace, "10.75.0.99") == "", spoof

    server_mac = json.loads(cloud.kubectl("get", "instance", "sg-server", "-o", "json"))[
        "status"]["interfaces"][0]["mac"]  # fmt: skip
    cloud.kubectl("delete", "fip", "sg-server", "--timeout=60s")
    cloud.kubectl("delete", "router", "sg-edge", "--timeout=60s")
    cloud.kubectl("delete", "instance", "sg-server", "sg-client", "--timeout=120s")
    # Its flows go with the guest; the group goes once no NIC is in it.
    assert server_mac not in flows(cloud.dev.bridge)
    cloud.kubectl("delete", "sg", "sg-ssh", "--timeout=60s")
    cloud.kubectl("delete", "network", "sg-net", "--timeout=120s")


def flows(bridge: str) -> str:
    return subprocess.run(["ovs-ofctl", "dump-flows", bridge], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def removing_cuts_a_running_ping(cloud: Cloud, address: str, log: Path) -> None:
    """A ping running from the host (one echo id: one connection) stops answering soon
    after sg-ssh's icmp rule (its third) is removed."""
    with log.open("w") as out:
        pinger = subprocess.Popen(["busybox", "ping", "-i", "0.2", address], stdout=out,
                                  stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_until("the ping answered", lambda: "bytes from" in log.read_text(), timeout=10)
        cloud.kubectl("patch", "sg", "sg-ssh", "--type=json", "-p",
                      json.dumps([{"op": "remove", "path": "/spec/rules/2"}]))  # fmt: skip

        def silent() -> bool:
            before = log.read_text().count("bytes from")
            time.sleep(1.0)
            return log.read_text().count("bytes from") == before

        wait_until("the running ping cut", silent, timeout=30)
    finally:
        pinger.kill()
        pinger.wait()
