"""Which tracked connections the rules no longer allow (drivers/network/conntrack.py), as
pure data: dpctl/dump-conntrack's lines in, the entries to cut out."""

from __future__ import annotations

from stratus_agent.drivers.network.conntrack import allowed, parse, revoked
from stratus_agent.drivers.network.firewall import GuardedPort
from stratus_api.security_group_wire import Direction, NodeRule, NodeSecurityGroupSpec, Protocol

DUMP = """\
icmp,orig=(src=10.0.0.3,dst=10.0.0.1,id=4660,type=8,code=0),reply=(src=10.0.0.1,dst=10.0.0.3,id=4660,type=0,code=0),zone=7
tcp,orig=(src=192.0.2.9,dst=10.0.0.1,sport=40000,dport=22),reply=(src=10.0.0.1,dst=192.0.2.9,sport=22,dport=40000),zone=7,protoinfo=(state=ESTABLISHED)
tcp,orig=(src=192.0.2.9,dst=10.0.0.1,sport=40001,dport=8080),reply=(src=10.0.0.1,dst=192.0.2.9,sport=8080,dport=40001),zone=7,protoinfo=(state=ESTABLISHED)
udp,orig=(src=10.0.0.1,dst=198.51.100.53,sport=5353,dport=53),reply=(src=198.51.100.53,dst=10.0.0.1,sport=53,dport=5353),zone=7
tcp,orig=(src=10.0.0.5,dst=10.0.0.6,sport=1,dport=2),reply=(src=10.0.0.6,dst=10.0.0.5,sport=2,dport=1),zone=8
icmpv6,orig=(src=fd00::1,dst=fd00::2,id=1,type=128,code=0),reply=(src=fd00::2,dst=fd00::1,id=1,type=129,code=0),zone=7
"""
WEB = NodeSecurityGroupSpec(
    uid="00000000-0000-4000-8000-000000000001", namespace="ns", name="web",
    rules=[NodeRule(direction=Direction.INGRESS, protocol=Protocol.TCP, port_min=22,
                    port_max=22, remotes=["0.0.0.0/0"]),
           NodeRule(direction=Direction.INGRESS, protocol=Protocol.ICMP, remotes=["10.0.0.3/32"])],
)  # fmt: skip
PORT = GuardedPort(ofport=5, tag=7, mac="52:54:00:00:00:01", address="10.0.0.1",
                   groups=("ns/web",))  # fmt: skip


def test_the_dump_is_read_ipv4_tcp_udp_and_icmp_only() -> None:
    found = parse(DUMP)
    assert [(c.zone, c.proto, c.src, c.dst, c.dport) for c in found] == [
        (7, 1, "10.0.0.3", "10.0.0.1", None),
        (7, 6, "192.0.2.9", "10.0.0.1", 22),
        (7, 6, "192.0.2.9", "10.0.0.1", 8080),
        (7, 17, "10.0.0.1", "198.51.100.53", 53),
        (8, 6, "10.0.0.5", "10.0.0.6", 2),
    ]
    assert found[0].tuple_text() == (
        "ct_nw_src=10.0.0.3,ct_nw_dst=10.0.0.1,ct_nw_proto=1,icmp_code=0,icmp_id=4660,icmp_type=8"
    )
    assert found[1].tuple_text() == (
        "ct_nw_src=192.0.2.9,ct_nw_dst=10.0.0.1,ct_nw_proto=6,ct_tp_dst=22,ct_tp_src=40000"
    )


def test_what_the_rules_still_allow_stays_and_the_rest_of_the_ports_zone_is_cut() -> None:
    icmp, ssh, web, dns, elsewhere = parse(DUMP)
    groups = {"ns/web": WEB}
    assert allowed(icmp, PORT, groups) and allowed(ssh, PORT, groups)
    assert not allowed(web, PORT, groups)  # no rule for 8080
    assert not allowed(dns, PORT, groups)  # no egress rule at all
    assert allowed(elsewhere, PORT, groups)  # not the port's connection
    assert revoked(parse(DUMP), [PORT], groups) == [web, dns]
    # A group the node does not hold allows nothing; another zone is not the port's.
    assert revoked(parse(DUMP), [PORT], {}) == [icmp, ssh, web, dns]
    other = GuardedPort(ofport=6, tag=9, mac="52:54:00:00:00:02", address="10.0.0.1",
                        groups=())  # fmt: skip
    assert revoked(parse(DUMP), [other], {}) == []
