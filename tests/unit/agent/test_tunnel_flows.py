"""The tunnel bridge's flow table, computed whole from state (no OVS here)."""

from __future__ import annotations

from stratus_agent.drivers.network.tunnels import (
    OverlaySegment,
    endpoints_of,
    flow_table,
    port_name,
)
from stratus_api.network_wire import OverlayPeer

B, C = "192.0.2.2", "192.0.2.3"
MAC_B = "52:54:00:00:00:0b"
LINK = 1
PORTS = {B: 7, C: 8}


def segment(vni: int, tag: int, *peers: OverlayPeer) -> OverlaySegment:
    return OverlaySegment(vni=vni, tag=tag, peers=peers)


def test_one_network_to_one_peer_is_the_verified_design() -> None:
    flows = flow_table([segment(1001, 5, OverlayPeer(endpoint=B, macs=[MAC_B]))], LINK, {B: 7})
    assert flows == [
        "table=0,priority=1,in_port=1,actions=resubmit(,1)",
        "table=0,priority=1,in_port=7,actions=resubmit(,4)",
        "table=0,priority=0,actions=drop",
        f"table=1,priority=2,dl_vlan=5,dl_dst={MAC_B},actions=strip_vlan,set_tunnel:1001,output:7",
        "table=1,priority=1,dl_vlan=5,actions=strip_vlan,set_tunnel:1001,output:7",
        "table=4,priority=1,tun_id=1001,actions=mod_vlan_vid:5,output:1",
        "table=1,priority=0,actions=drop",
        "table=4,priority=0,actions=drop",
    ]


def test_floods_go_only_to_the_nodes_hosting_each_network() -> None:
    flows = flow_table(
        [segment(1001, 5, OverlayPeer(endpoint=B)), segment(1002, 6, OverlayPeer(endpoint=C))],
        LINK,
        PORTS,
    )
    floods = [f for f in flows if "priority=1,dl_vlan" in f]
    assert floods == [
        "table=1,priority=1,dl_vlan=5,actions=strip_vlan,set_tunnel:1001,output:7",
        "table=1,priority=1,dl_vlan=6,actions=strip_vlan,set_tunnel:1002,output:8",
    ]
    both = flow_table(
        [segment(1001, 5, OverlayPeer(endpoint=C), OverlayPeer(endpoint=B))], 1, PORTS
    )
    assert (
        "table=1,priority=1,dl_vlan=5,actions=strip_vlan,set_tunnel:1001,output:7,output:8" in both
    )


def test_a_network_without_peers_stays_local_but_is_still_received() -> None:
    flows = flow_table([segment(1001, 5)], LINK, PORTS)
    assert not [f for f in flows if f.startswith("table=1,priority=1") or "priority=2" in f]
    assert "table=4,priority=1,tun_id=1001,actions=mod_vlan_vid:5,output:1" in flows
    # Every VXLAN port still feeds the inbound table: another Network may use it.
    assert "table=0,priority=1,in_port=8,actions=resubmit(,4)" in flows


def test_no_networks_drop_everything_but_keep_the_dispatch() -> None:
    assert flow_table([], LINK, {}) == [
        "table=0,priority=1,in_port=1,actions=resubmit(,1)",
        "table=0,priority=0,actions=drop",
        "table=1,priority=0,actions=drop",
        "table=4,priority=0,actions=drop",
    ]


def test_a_peer_whose_port_is_not_ready_gets_no_flow() -> None:
    flows = flow_table([segment(1001, 5, OverlayPeer(endpoint=B, macs=[MAC_B]))], LINK, {})
    assert not [f for f in flows if "output:" in f and "table=1" in f]


def test_a_mac_claimed_twice_gets_one_unicast_flow() -> None:
    flows = flow_table(
        [
            segment(
                9, 2, OverlayPeer(endpoint=C, macs=[MAC_B]), OverlayPeer(endpoint=B, macs=[MAC_B])
            )
        ],
        LINK,
        PORTS,
    )
    unicast = [f for f in flows if "priority=2" in f]
    assert unicast == [
        f"table=1,priority=2,dl_vlan=2,dl_dst={MAC_B},actions=strip_vlan,set_tunnel:9,output:7"
    ]


def test_endpoints_and_port_names() -> None:
    segments = [
        segment(1, 1, OverlayPeer(endpoint=C)),
        segment(2, 2, OverlayPeer(endpoint=B), OverlayPeer(endpoint=C)),
    ]
    assert endpoints_of(segments) == [B, C]
    assert port_name("10.0.0.2") == "vxlan-0a000002"
    v6 = port_name("2001:db8::1")
    assert v6.startswith("vxlan6-") and len(v6) <= 15
    assert port_name("2001:db8::1") != port_name("2001:db8::2")
