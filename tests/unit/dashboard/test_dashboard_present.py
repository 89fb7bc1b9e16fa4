"""What the dashboard shows of objects and what its forms make, from the API's JSON."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from stratus_api.v1alpha1 import Instance, Network
from stratus_operator.dashboard import present

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)


def instance(
    name: str, phase: str = "Running", nets: tuple[str, ...] = ("web",), ready: str = "True",
    generation: int = 1, **status: Any,
) -> dict[str, Any]:  # fmt: skip
    return {
        "metadata": {"name": name, "uid": f"u-{name}", "generation": generation,
                     "creationTimestamp": "2026-11-28T11:00:00Z"},
        "spec": {"networks": [{"name": n} for n in nets]},
        "status": {"phase": phase, "node": "n1",
                   "interfaces": [{"network": n, "ip": f"10.0.{i}.5"} for i, n in enumerate(nets)],
                   "conditions": [{"type": "Ready", "status": ready, "reason": "GuestRunning",
                                   "observedGeneration": 1}], **status},
    }  # fmt: skip


def network(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"u-{name}", "generation": 1},
            "spec": {"type": "overlay", "subnets": [{"cidr": "10.0.0.0/24"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True",
                                       "reason": "Ready"}]}}  # fmt: skip


@pytest.mark.parametrize(("seconds", "shown"), [(5, "5s"), (119, "119s"), (600, "10m"),
                                                 (3 * 3600, "3h"), (3 * 86400, "3d")])  # fmt: skip
def test_ages_read_as_kubectl_prints_them(seconds: int, shown: str) -> None:
    created = (NOW - datetime.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    assert present.age(created, NOW) == shown


def test_a_row_shows_phase_reason_node_addresses_and_how_it_reads() -> None:
    row = present.row("instances", instance("web-1"), NOW)
    assert (row.name, row.state, row.tone, row.reason) == ("web-1", "Running", "ok", "GuestRunning")
    assert row.cells == ("n1", "web: 10.0.0.5") and row.age == "60m"


def test_ready_at_an_older_generation_or_stalled_does_not_read_ok() -> None:
    assert present.row("instances", instance("a", generation=2)).tone == "busy"
    stalled = instance("b", ready="False")
    stalled["status"]["conditions"].append({"type": "Stalled", "status": "True"})
    assert present.row("instances", stalled).tone == "bad"
    deleting = instance("c")
    deleting["metadata"]["deletionTimestamp"] = "2026-11-28T11:59:00Z"
    assert present.row("instances", deleting).state == "Deleting"


def test_kinds_without_a_phase_read_ready_or_not() -> None:
    assert present.row("networks", network("web")).state == "Ready"
    bare = network("new")
    del bare["status"]
    assert present.row("networks", bare).state == "Pending"


def test_topology_joins_each_nic_to_its_network_bus() -> None:
    instances = [instance("a", nets=("web", "db")), instance("b", nets=("gone",))]
    layout = present.topology([network("web"), network("db")], instances)
    assert [n.name for n in layout.networks] == ["db", "web", "gone"]
    assert next(n for n in layout.networks if n.name == "gone").tone == "bad"  # not visible
    buses = {n.name: n.y for n in layout.networks}
    a, b = layout.instances
    assert {(y1, ip) for x1, y1, _x2, _y2, ip in layout.links if x1 == a.x + 75} == {
        (buses["web"], "10.0.0.5"), (buses["db"], "10.0.1.5")}  # fmt: skip
    assert any(x1 == b.x + 75 and y1 == buses["gone"] for x1, y1, *_ in layout.links)


def test_forms_make_objects_the_api_models_accept() -> None:
    made = present.manifest("instances", {
        "name": " web-1 ", "image": "debian", "instanceType": "s1.small", "cpu": "2",
        "memory": "", "networks": "web", "userData": "echo hi\r\n"})  # fmt: skip
    assert made["spec"] == {"boot": {"image": "debian"}, "instanceType": "s1.small", "cpu": 2,
                            "networks": [{"name": "web"}], "userData": "echo hi\n"}  # fmt: skip
    Instance.model_validate(made)
    net = present.manifest("networks", {"name": "web", "type": "overlay", "cidr": "10.9.0.0/24"})
    Network.model_validate(net)
    assert present.manifest("volumes", {"name": "d", "size": "1Gi"})["spec"] == {"size": "1Gi"}
    image = present.manifest("images", {"name": "i", "url": "http://x/i.qcow2", "format": ""})
    assert image["spec"] == {"source": {"http": {"url": "http://x/i.qcow2"}}}


def test_what_is_not_a_number_goes_to_the_api_server_as_typed() -> None:
    made = present.manifest("instances", {"name": "w", "image": "i", "cpu": "two"})
    assert made["spec"]["cpu"] == "two"  # the API server names spec.cpu in its refusal


def test_the_selects_offer_what_the_api_enums_allow() -> None:
    options = present.options(["web"])
    assert options["networks"] == [("", "none"), ("web", "web")]
    assert [v for v, _ in options["type"]] == ["overlay", "vlan", "flat"]
    assert ("ceph", "ceph") in options["backend"]
