"""Where a FloatingIP leads, as plain data (controllers/floating_ip.py), and the ledger that
holds its address (controllers/addressing.py)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from stratus_api.v1alpha1 import FloatingIP, Instance, Network, Router
from stratus_operator.controllers import floating_ip as plan
from stratus_operator.controllers.addressing import NetworkLedger
from stratus_operator.controllers.ipam import IpamError
from stratus_operator.controllers.problem import Problem
from stratus_operator.services.floating_ips import check_not_taken
from stratus_operator.services.runtime import Binding

READY = [{"type": "Ready", "status": "True", "reason": "Routing",
          "lastTransitionTime": "2026-01-01T00:00:00Z"}]  # fmt: skip


def meta(name: str) -> dict[str, Any]:
    return {"name": name, "namespace": "ns", "uid": str(uuid.uuid4()), "generation": 1}


def floating(**spec: Any) -> FloatingIP:
    return FloatingIP.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "FloatingIP", "metadata": meta("ip"),
        "spec": {"network": "public", **spec},
    })  # fmt: skip


def router(name: str, *networks: str, external: str = "public", ready: bool = True) -> Router:
    return Router.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Router", "metadata": meta(name),
        "spec": {"networks": [{"name": n} for n in networks],
                 "externalGateway": {"network": external}},
        "status": {"node": "n1", "conditions": READY if ready else []},
    })  # fmt: skip


def instance(*nics: tuple[str, str | None]) -> Instance:
    return Instance.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Instance", "metadata": meta("web"),
        "spec": {"cpu": 1, "memory": "128Mi", "boot": {"image": "img"},
                 "networks": [{"name": n} for n, _ in nics]},
        "status": {"interfaces": [{"network": n, "ip": ip} for n, ip in nics if ip]},
    })  # fmt: skip


def test_the_first_nic_a_router_leads_out_of_is_mapped() -> None:
    vm = instance(("db", "10.2.0.5"), ("web", "10.1.0.5"))
    edge = router("edge", "web")
    found = plan.target(floating(instance="web"), vm, [router("other", "db", external="x"), edge])
    assert (found.router, found.nic, found.fixed) == (edge, "web", "10.1.0.5")


def test_what_keeps_it_from_leading_anywhere_names_the_field() -> None:
    vm = instance(("web", "10.1.0.5"), ("db", None))
    cases = [
        (floating(instance="web"), None, [], "InstanceNotFound", "spec.instance: Instance web"),
        (floating(instance="web", nic="nope"), vm, [], "NicNotFound", "spec.nic: Instance web "
         "has no NIC on Network nope (its NICs: web, db)"),
        (floating(instance="web"), vm, [router("edge", "web", external="elsewhere")], "NoRouter",
         "spec.instance: no Router joins Network web or db"),
        (floating(instance="web", nic="db"), vm, [router("edge", "db")], "FixedAddressPending",
         "spec.instance: Instance web has no address on Network db yet"),
        (floating(instance="web"), vm, [router("edge", "web", ready=False)], "RouterNotReady",
         "spec.instance: Router edge"),
    ]  # fmt: skip
    for spec, found, routers, reason, message in cases:
        with pytest.raises(Problem) as caught:
            plan.target(spec, found, routers)
        assert (caught.value.reason, str(caught.value)[: len(message)]) == (reason, message)
    assert not plan_problem(floating(instance="web", nic="nope"), vm).waiting  # the user's to fix


def plan_problem(spec: FloatingIP, vm: Instance) -> Problem:
    try:
        plan.target(spec, vm, [])
    except Problem as problem:
        return problem
    raise AssertionError("no problem")


def test_the_ledger_gives_floating_addresses_once_and_names_the_field() -> None:
    public = Network.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Network", "metadata": meta("public"),
        "spec": {"type": "flat", "physicalNetwork": "ext", "external": True,
                 "subnets": [{"cidr": "172.24.4.0/24", "gateway": "172.24.4.1",
                              "allocationPools": ["172.24.4.10/31"]}]},
    })  # fmt: skip
    ledger = NetworkLedger(public.spec)
    assert ledger.allocate_address("a", None, "spec.address") == "172.24.4.10"
    assert ledger.allocate_address("a", None, "spec.address") == "172.24.4.10"  # kept
    with pytest.raises(IpamError, match="is already in use"):
        ledger.allocate_address("b", "172.24.4.10", "spec.address")
    assert ledger.allocate_address("b", None, "spec.address") == "172.24.4.11"
    with pytest.raises(IpamError) as caught:
        ledger.allocate_address("c", None, "spec.network")
    assert caught.value.field == "spec.network" and "no free address left" in str(caught.value)
    # A different address asked for replaces the one held.
    assert ledger.allocate_address("a", "172.24.4.20", "spec.address") == "172.24.4.20"
    assert ledger.allocate_address("c", None, "spec.network") == "172.24.4.10"


def test_a_fixed_address_takes_one_floating_address() -> None:
    edge = router("edge", "web")
    found = plan.target(floating(instance="web"), instance(("web", "10.1.0.5")), [edge])
    mapped = {"other": Binding(edge.metadata.uid or "", "172.24.4.7", "10.1.0.5")}
    with pytest.raises(Problem) as caught:
        check_not_taken("mine", found, mapped)
    assert caught.value.reason == "FixedAddressTaken" and caught.value.waiting
    assert str(caught.value) == (
        "spec.instance: 10.1.0.5 already has floating address 172.24.4.7; one fixed address "
        "takes one"
    )
    check_not_taken("other", found, mapped)  # its own mapping is no conflict
    check_not_taken("mine", found, {"other": Binding("another-router", "172.24.4.7", "10.1.0.5")})
