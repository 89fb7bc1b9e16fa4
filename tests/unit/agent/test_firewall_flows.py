"""The security-group firewall's flow table, computed whole from state (no OVS here)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from stratus_agent.drivers.network.firewall import (
    NORMAL_ONLY,
    GuardedPort,
    OpenPort,
    PendingPort,
    flow_table,
    port_masks,
)
from stratus_api.security_group_wire import (
    Direction,
    NodeRule,
    NodeSecurityGroupSpec,
    Protocol,
)

MAC_A, MAC_B = "52:54:00:00:00:0a", "52:54:00:00:00:0b"
A = GuardedPort(5, 3, MAC_A.upper(), "10.0.0.5", ("ns/web",))
B = GuardedPort(7, 3, MAC_B, None, ("ns/web",))
ROUTER, TRUNK = OpenPort(6, 3), OpenPort(1, None)
ZONE = "zone=NXM_NX_REG6[0..15]"


def group(name: str, *rules: NodeRule) -> NodeSecurityGroupSpec:
    return NodeSecurityGroupSpec(
        uid="00000000-0000-4000-8000-000000000001", namespace="ns", name=name, rules=list(rules)
    )


def rule(
    direction: Direction, protocol: Protocol, *remotes: str, ports: tuple[int, int] | None = None
) -> NodeRule:
    first, last = ports if ports is not None else (None, None)
    return NodeRule(direction=direction, protocol=protocol, port_min=first, port_max=last,
                    remotes=list(remotes))  # fmt: skip


def rule_flows(flows: list[str]) -> list[str]:
    """The flows the rules made (priority 50 in the conntrack tables)."""
    return [f for f in flows if f.startswith(("table=11,priority=50", "table=41,priority=50"))]


@pytest.mark.parametrize(
    ("first", "last", "count"),
    [(22, 22, 1), (1, 65535, 16), (0, 65535, 1), (1000, 1999, 7), (8000, 8080, 3),
     (65535, 65535, 1), (1024, 2047, 1), (1023, 1024, 2)],
)  # fmt: skip
def test_port_masks_cover_the_range_exactly_with_aligned_blocks(
    first: int, last: int, count: int
) -> None:
    pairs = port_masks(first, last)
    assert len(pairs) == count
    covered: list[int] = []
    for value, mask in pairs:
        assert value & ~mask & 0xFFFF == 0  # no value bit under the wildcard
        assert mask == (0xFFFF << (16 - bin(mask).count("1"))) & 0xFFFF  # a prefix
        covered += [port for port in range(0x10000) if port & mask == value]
    assert covered == list(range(first, last + 1))  # each port once, none outside


@pytest.mark.parametrize(("first", "last"), [(10, 9), (-1, 5), (5, 65536)])
def test_port_masks_refuse_what_is_no_range(first: int, last: int) -> None:
    with pytest.raises(ValueError, match="not a port range"):
        port_masks(first, last)


def test_without_guarded_or_pending_ports_the_bridge_just_switches() -> None:
    assert flow_table([], [], [], {}) == [NORMAL_ONLY]
    assert flow_table([], [ROUTER, TRUNK], [], {"ns/web": group("web")}) == [NORMAL_ONLY]
    assert NORMAL_ONLY == "table=0,priority=0,actions=NORMAL"


def test_one_port_without_rules_is_the_verified_pipeline() -> None:
    flows = flow_table([A], [ROUTER, TRUNK], [], {})
    zone = ZONE
    assert flows == [
        "table=0,priority=100,in_port=1,vlan_tci=0x1000/0x1000,"
        "actions=move:NXM_OF_VLAN_TCI[0..11]->NXM_NX_REG6[0..11],resubmit(,30)",
        "table=0,priority=100,in_port=5,vlan_tci=0x0000/0x1000,"
        "actions=load:5->NXM_NX_REG5[],load:3->NXM_NX_REG6[],resubmit(,10)",
        "table=0,priority=100,in_port=6,vlan_tci=0x0000/0x1000,"
        "actions=load:3->NXM_NX_REG6[],resubmit(,30)",
        "table=0,priority=0,actions=drop",
        f"table=10,priority=100,reg5=5,udp,dl_src={MAC_A},tp_src=68,tp_dst=67,"
        "actions=resubmit(,20)",
        "table=10,priority=90,reg5=5,udp,tp_src=67,actions=drop",
        f"table=10,priority=80,reg5=5,arp,dl_src={MAC_A},arp_sha={MAC_A},arp_spa=10.0.0.5,"
        "actions=resubmit(,20)",
        f"table=10,priority=80,reg5=5,ip,dl_src={MAC_A},nw_src=10.0.0.5,"
        f"actions=ct(table=11,{zone})",
        "table=10,priority=0,actions=drop",
        "table=11,priority=100,ct_state=+inv+trk,actions=drop",
        "table=11,priority=90,ct_state=+est+trk,actions=resubmit(,20)",
        "table=11,priority=80,ct_state=+rel+trk,actions=resubmit(,20)",
        "table=11,priority=0,actions=drop",
        f"table=20,priority=100,reg6=3,dl_dst={MAC_A},actions=load:5->NXM_NX_REG5[],resubmit(,40)",
        f"table=20,priority=10,ct_state=+new+trk,ip,actions=ct(commit,{zone}),NORMAL",
        "table=20,priority=0,actions=NORMAL",
        f"table=30,priority=100,reg6=3,dl_dst={MAC_A},vlan_tci=0x0000/0x1000,"
        "actions=clone(resubmit(,31)),load:5->NXM_NX_REG5[],resubmit(,40)",
        f"table=30,priority=100,reg6=3,dl_dst={MAC_A},vlan_tci=0x1000/0x1000,"
        "actions=clone(resubmit(,31)),load:5->NXM_NX_REG5[],pop_vlan,resubmit(,40)",
        "table=30,priority=0,actions=NORMAL",
        f"table=31,priority=100,reg6=3,dl_src={MAC_A},actions=drop",
        "table=31,priority=50,dl_src=00:00:00:00:00:00/01:00:00:00:00:00,"
        "actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],NORMAL",
        "table=31,priority=0,actions=drop",
        "table=40,priority=100,arp,actions=output:NXM_NX_REG5[]",
        "table=40,priority=100,udp,tp_src=67,tp_dst=68,actions=output:NXM_NX_REG5[]",
        "table=40,priority=90,ct_state=+trk,ip,actions=resubmit(,41)",
        f"table=40,priority=90,ct_state=-trk,ip,actions=ct(table=41,{zone})",
        "table=40,priority=0,actions=drop",
        "table=41,priority=100,ct_state=+inv+trk,actions=drop",
        "table=41,priority=90,ct_state=+est+trk,actions=output:NXM_NX_REG5[]",
        "table=41,priority=80,ct_state=+rel+trk,actions=output:NXM_NX_REG5[]",
        "table=41,priority=0,actions=drop",
    ]


def test_rules_become_flows_per_port_remote_and_port_block() -> None:
    web = group(
        "web",
        rule(Direction.INGRESS, Protocol.TCP, "0.0.0.0/0", "192.0.2.0/24", ports=(8000, 8080)),
        rule(Direction.EGRESS, Protocol.ANY, "10.0.0.7/32"),
        rule(Direction.INGRESS, Protocol.ICMP, "10.1.0.0/16"),
    )
    flows = rule_flows(flow_table([A], [], [], {"ns/web": web}))
    new, commit = "ct_state=+new-est+trk", "ct(commit,zone=NXM_NX_REG6[0..15])"
    accept_in = f"actions={commit},output:NXM_NX_REG5[]"
    assert flows == [
        f"table=11,priority=50,reg5=5,{new},ip,nw_dst=10.0.0.7/32,actions=resubmit(,20)",
        f"table=41,priority=50,reg5=5,{new},icmp,nw_src=10.1.0.0/16,{accept_in}",
        f"table=41,priority=50,reg5=5,{new},tcp,nw_src=192.0.2.0/24,tp_dst=0x1f40/0xffc0,{accept_in}",
        f"table=41,priority=50,reg5=5,{new},tcp,nw_src=192.0.2.0/24,tp_dst=0x1f80/0xfff0,{accept_in}",
        f"table=41,priority=50,reg5=5,{new},tcp,nw_src=192.0.2.0/24,tp_dst=8080,{accept_in}",
        f"table=41,priority=50,reg5=5,{new},tcp,tp_dst=0x1f40/0xffc0,{accept_in}",
        f"table=41,priority=50,reg5=5,{new},tcp,tp_dst=0x1f80/0xfff0,{accept_in}",
        f"table=41,priority=50,reg5=5,{new},tcp,tp_dst=8080,{accept_in}",
    ]  # fmt: skip


def test_a_rule_without_remotes_lets_nothing_through() -> None:
    web = group("web", rule(Direction.INGRESS, Protocol.TCP, ports=(22, 22)),
                rule(Direction.EGRESS, Protocol.ANY))  # fmt: skip
    flows = flow_table([A], [], [], {"ns/web": web})
    assert rule_flows(flows) == []
    assert flows == flow_table([A], [], [], {})  # as if the port had no rules at all


def test_a_group_not_held_contributes_nothing_and_the_port_stays_closed() -> None:
    web = group("web", rule(Direction.INGRESS, Protocol.ANY, "0.0.0.0/0"))
    missing = GuardedPort(5, 3, MAC_A, "10.0.0.5", ("ns/missing",))
    flows = flow_table([missing], [], [], {"ns/web": web})
    assert rule_flows(flows) == []
    assert "table=41,priority=0,actions=drop" in flows
    both = GuardedPort(5, 3, MAC_A, "10.0.0.5", ("ns/missing", "ns/web"))
    assert len(rule_flows(flow_table([both], [], [], {"ns/web": web}))) == 1


def test_ports_are_matched_for_tcp_and_udp_only() -> None:
    # Validation refuses ports on icmp; a spec built without it still gets no tp_dst.
    icmp = NodeRule.model_construct(direction=Direction.INGRESS, protocol=Protocol.ICMP,
                                    port_min=22, port_max=22, remotes=["0.0.0.0/0"])  # fmt: skip
    udp = rule(Direction.INGRESS, Protocol.UDP, "0.0.0.0/0", ports=(53, 53))
    web = NodeSecurityGroupSpec.model_construct(
        uid="00000000-0000-4000-8000-000000000001", namespace="ns", name="web", rules=[icmp, udp]
    )
    flows = rule_flows(flow_table([A], [], [], {"ns/web": web}))
    assert [f.split("+trk,")[1].split(",actions")[0] for f in flows] == ["icmp", "udp,tp_dst=53"]


def test_the_table_is_the_same_whatever_the_order_and_duplicates() -> None:
    rules = [rule(Direction.INGRESS, Protocol.TCP, "10.0.0.0/8", "192.0.2.0/24", ports=(22, 23)),
             rule(Direction.EGRESS, Protocol.UDP, "0.0.0.0/0", ports=(53, 53)),
             rule(Direction.INGRESS, Protocol.ICMP, "10.0.0.0/8")]  # fmt: skip
    other = GuardedPort(9, 4, "52:54:00:00:00:0c", "10.0.0.9", ("ns/web", "ns/db"))
    specs = {"ns/web": group("web", *rules), "ns/db": group("db", rules[0])}
    first = flow_table([A, B, other], [ROUTER, TRUNK], [PendingPort(3, "52:54:00:00:00:0d")], specs)
    shuffler = random.Random(7)
    for _ in range(5):
        mixed = rules + rules  # each rule twice: the same flows once
        shuffler.shuffle(mixed)
        for one in mixed:
            shuffler.shuffle(one.remotes)
        ports, opens = [A, B, other], [ROUTER, TRUNK, ROUTER]
        shuffler.shuffle(ports)
        shuffler.shuffle(opens)
        again = {"ns/db": group("db", rules[0]), "ns/web": group("web", *mixed)}
        table = flow_table(ports, opens, [PendingPort(3, "52:54:00:00:00:0D")], again)
        assert table == first
    assert len(set(first)) == len(first)


def test_guarded_ports_reach_each_other_through_both_rule_sets_in_their_vlan_only() -> None:
    other_net = GuardedPort(9, 4, MAC_A, "10.0.0.5", ())  # the same MAC, another Network
    flows = flow_table([A, B, other_net], [], [], {})
    to_guests = [f for f in flows if f.startswith("table=20,priority=100")]
    assert to_guests == [
        f"table=20,priority=100,reg6=3,dl_dst={MAC_A},actions=load:5->NXM_NX_REG5[],resubmit(,40)",
        f"table=20,priority=100,reg6=3,dl_dst={MAC_B},actions=load:7->NXM_NX_REG5[],resubmit(,40)",
        f"table=20,priority=100,reg6=4,dl_dst={MAC_A},actions=load:9->NXM_NX_REG5[],resubmit(,40)",
    ]
    # B has no address: IPv4 and ARP from its own MAC with any source address.
    egress = [f for f in flows if f.startswith("table=10,priority=80,reg5=7")]
    assert egress == [
        f"table=10,priority=80,reg5=7,arp,dl_src={MAC_B},arp_sha={MAC_B},actions=resubmit(,20)",
        f"table=10,priority=80,reg5=7,ip,dl_src={MAC_B},actions=ct(table=11,{ZONE})",
    ]


def test_pending_ports_get_nothing_switched_to_them() -> None:
    pending = PendingPort(3, "52:54:00:00:00:0D")
    flows = flow_table([], [ROUTER], [pending], {})
    assert "table=0,priority=0,actions=drop" in flows  # the port, once plugged, too
    assert [f for f in flows if "0d" in f] == [
        "table=20,priority=90,reg6=3,dl_dst=52:54:00:00:00:0d,actions=drop",
        "table=30,priority=90,reg6=3,dl_dst=52:54:00:00:00:0d,actions=drop",
    ]
    # Plugged and guarded: the guarded port wins, no drop is left for its MAC.
    plugged = GuardedPort(8, 3, "52:54:00:00:00:0d", None, ())
    flows = flow_table([plugged], [ROUTER], [pending], {})
    assert not [f for f in flows if "priority=90,reg6" in f]


def test_a_port_listed_twice_is_classified_once_guarded_first() -> None:
    flows = flow_table([A, GuardedPort(5, 9, MAC_B, None, ())], [OpenPort(5, 3)], [], {})
    assert [f for f in flows if f.startswith("table=0,priority=100")] == [
        "table=0,priority=100,in_port=5,vlan_tci=0x0000/0x1000,"
        "actions=load:5->NXM_NX_REG5[],load:3->NXM_NX_REG6[],resubmit(,10)"
    ]


@pytest.mark.parametrize(
    "make",
    [lambda: GuardedPort(0, 3, MAC_A, None, ()),
     lambda: GuardedPort(5, 0, MAC_A, None, ()),
     lambda: GuardedPort(5, 3, f"{MAC_A},actions=NORMAL", None, ()),
     lambda: GuardedPort(5, 3, MAC_A, "10.0.0.5/24", ()),
     lambda: OpenPort(6, 4095),
     lambda: PendingPort(3, "52:54:00:00:00")],
)  # fmt: skip
def test_only_well_formed_ports_go_into_flow_text(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()
