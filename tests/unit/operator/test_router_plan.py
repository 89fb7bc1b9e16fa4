"""What a Router's node builds, and where, as plain data (controllers/router.py)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from stratus_api.v1alpha1 import Hypervisor, Network, Router
from stratus_operator.controllers import router as plan
from stratus_operator.controllers.problem import Problem
from stratus_operator.controllers.router import External

READY = [{"type": "Ready", "status": "True", "reason": "Ready",
          "lastTransitionTime": "2026-01-01T00:00:00Z"}]  # fmt: skip


def network(name: str, *cidrs: str, gateway: bool = True, **spec: Any) -> Network:
    subnets = [
        {"cidr": c, **({"gateway": c.replace(".0/", ".1/").split("/")[0]} if gateway else {})}
        for c in cidrs
    ]
    return Network.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Network",
        "metadata": {"name": name, "namespace": "ns", "uid": str(uuid.uuid4()), "generation": 1},
        "spec": {"subnets": subnets, **spec},
        "status": {"segmentationId": 5, "conditions": READY},
    })  # fmt: skip


def router(*networks: str, external: str | None = None, node: str | None = None) -> Router:
    spec: dict[str, Any] = {"networks": [{"name": n} for n in networks]}
    if external:
        spec["externalGateway"] = {"network": external}
    return Router.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Router",
        "metadata": {"name": "edge", "namespace": "ns", "uid": str(uuid.uuid4()), "generation": 2},
        "spec": spec, **({"status": {"node": node}} if node else {}),
    })  # fmt: skip


def hypervisor(name: str, ready: bool = True, physnets: tuple[str, ...] = ()) -> Hypervisor:
    conditions = [{**READY[0], "status": "True" if ready else "False"}]
    return Hypervisor.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Hypervisor", "metadata": {"name": name},
        "spec": {"endpoint": "https://n:8443", "tokenSecretRef": {"namespace": "s", "name": "t"}},
        "status": {"conditions": conditions, "physicalNetworks": list(physnets)},
    })  # fmt: skip


def test_the_node_spec_has_a_gateway_port_per_network_and_the_external_leg() -> None:
    web, db = network("web", "10.1.0.0/24"), network("db", "10.2.0.0/24", "10.3.0.0/24")
    public = network("public", "172.24.4.0/24", type="flat", physicalNetwork="external",
                     external=True)  # fmt: skip
    edge = router("web", "db", external="public")
    joined = plan.joined(edge, [web, db])
    assert plan.check_external(edge, public, joined) is public
    spec = plan.node_spec(edge, joined, External(public, "172.24.4.254/24"))
    assert [p.addresses for p in spec.ports] == [["10.1.0.1/24"], ["10.2.0.1/24", "10.3.0.1/24"]]
    assert spec.ports[0].mac == plan.router_mac(edge.metadata.uid or "", web.metadata.uid or "")
    assert spec.ports[0].mac.startswith("fa:16:3e:") and spec.ports[0].mac != spec.ports[1].mac
    assert spec.external is not None and spec.external.gateway == "172.24.4.1"
    assert spec.external.addresses == ["172.24.4.254/24"] and spec.external.snat
    assert spec.generation == 2


@pytest.mark.parametrize(
    ("found", "reason", "field", "waiting"),
    [
        ([None], "NetworkNotFound", "spec.networks[0].name", True),
        ([network("web", "10.1.0.0/24", gateway=False)], "NoGateway", "spec.networks[0].name",
         False),
        ([network("web", "10.1.0.0/24"), network("db", "10.1.0.0/25")], "SubnetsOverlap",
         "spec.networks[1].name", False),
    ],
)  # fmt: skip
def test_what_cannot_be_routed_names_the_field(
    found: list[Network | None], reason: str, field: str, waiting: bool
) -> None:
    edge = router(*("web", "db")[: len(found)])
    with pytest.raises(Problem) as caught:
        plan.joined(edge, found)
    assert caught.value.reason == reason and caught.value.waiting is waiting
    assert str(caught.value).startswith(f"{field}: ")


def test_an_external_gateway_must_be_an_external_network_apart_from_the_joined() -> None:
    web = network("web", "10.1.0.0/24")
    edge = router("web", external="public")
    inside = network("public", "172.24.4.0/24", type="flat", physicalNetwork="external")
    with pytest.raises(Problem, match=r"^spec.externalGateway.network: .* not external"):
        plan.check_external(edge, inside, [web])
    overlapping = network("public", "10.1.0.0/16", type="flat", physicalNetwork="external",
                          external=True)  # fmt: skip
    with pytest.raises(Problem, match=re.escape("overlaps 10.1.0.0/24 of Network web")):
        plan.check_external(edge, overlapping, [web])


def test_a_router_stays_on_its_ready_node_else_goes_to_the_least_loaded_one() -> None:
    public = network("public", "172.24.4.0/24", type="flat", physicalNetwork="external",
                     external=True)  # fmt: skip
    nodes = [hypervisor("a", physnets=("external",)), hypervisor("b", physnets=("external",)),
             hypervisor("c"), hypervisor("d", ready=False, physnets=("external",))]  # fmt: skip
    assert plan.candidates(router(node="b"), nodes, public, {"b": 5}) == ["b", "a"]
    assert plan.candidates(router(), nodes, public, {"a": 2, "b": 1}) == ["b", "a"]
    assert plan.candidates(router(node="d"), nodes, None, {}) == ["a", "b", "c"]
    with pytest.raises(Problem, match="physical network external"):
        plan.candidates(router(), [hypervisor("c")], public, {})
