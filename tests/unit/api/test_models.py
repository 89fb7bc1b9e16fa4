"""Model behaviour beyond refusals: defaults, wire format, the fixed-IP rule."""

from __future__ import annotations

import pytest

from stratus_api import validation
from stratus_api.v1alpha1 import Instance, Network, Volume
from stratus_api.v1alpha1.instance import RunStrategy
from stratus_api.v1alpha1.network import NetworkSpec, check_fixed_ip
from stratus_api.v1alpha1.volume import VolumeBackend


def test_defaults_match_what_the_api_server_fills_in() -> None:
    instance = Instance.model_validate(
        {"metadata": {"name": "a"}, "spec": {"instanceType": "small", "boot": {"image": "i"}}}
    )
    assert instance.spec.run_strategy is RunStrategy.ALWAYS
    assert instance.api_version == "stratus.io/v1alpha1" and instance.kind == "Instance"
    volume = Volume.model_validate({"spec": {"size": "1Gi"}})
    assert volume.spec.backend is VolumeBackend.FILE
    assert (
        Network.model_validate({"spec": {"subnets": [{"cidr": "10.0.0.0/24"}]}}).spec.type
        == "overlay"
    )


def test_wire_format_is_camel_case_and_round_trips() -> None:
    wire = {
        "apiVersion": "stratus.io/v1alpha1",
        "kind": "Instance",
        "metadata": {"name": "web", "namespace": "team-a", "uid": "u-1", "resourceVersion": "7"},
        "spec": {
            "cpu": 2,
            "memory": "2048Mi",
            "boot": {"image": "debian", "diskSize": "10Gi"},
            "networks": [{"name": "default", "ip": "10.0.0.5"}],
            "userDataSecretRef": {"name": "creds"},
            "runStrategy": "Halted",
        },
    }
    instance = validation.validate(wire)
    assert isinstance(instance, Instance)
    assert (
        instance.spec.boot.disk_size is not None
        and instance.spec.boot.disk_size.bytes == 10 * 2**30
    )
    out = instance.to_wire()
    assert out["spec"]["memory"] == "2Gi"  # normalised
    assert out["spec"]["userDataSecretRef"] == {"name": "creds", "key": "userData"}
    assert out["metadata"]["resourceVersion"] == "7"  # metadata the API server owns is kept
    assert validation.validate(out).to_wire() == out


def test_unknown_fields_are_refused_by_name() -> None:
    with pytest.raises(validation.InvalidObjectError) as caught:
        validation.validate(
            {"kind": "Volume", "metadata": {"name": "v"}, "spec": {"size": "1Gi", "sise": 1}}
        )
    assert [p.path for p in caught.value.problems] == ["spec.sise"]
    assert "Volume v is invalid: spec.sise:" in str(caught.value)


def test_unknown_kind() -> None:
    with pytest.raises(validation.InvalidObjectError, match="kind: unknown kind"):
        validation.validate({"kind": "Server"})


NETWORK = NetworkSpec.model_validate(
    {
        "subnets": [
            {"cidr": "10.0.0.0/24", "gateway": "10.0.0.1", "allocationPools": ["10.0.0.128/25"]},
            {"cidr": "fd00::/64"},
        ]
    }
)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("10.0.0.5", None),  # outside the pools is fine for a fixed IP, as in Neutron
        ("10.0.0.200", None),
        ("fd00::5", None),
        ("10.0.1.5", "outside the network's subnets (10.0.0.0/24, fd00::/64)"),
        ("10.0.0.0", "the network address of 10.0.0.0/24"),
        ("10.0.0.255", "the broadcast address of 10.0.0.0/24"),
        ("10.0.0.1", "the gateway of 10.0.0.0/24"),
        ("10.0.0.300", "not an IP address"),
    ],
)
def test_fixed_ip_rule(address: str, problem: str | None) -> None:
    found = check_fixed_ip(NETWORK, address)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
