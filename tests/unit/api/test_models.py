"""Model behaviour beyond refusals: defaults, wire format, the fixed-IP rule."""

from __future__ import annotations

import ipaddress
import re

import pytest

from stratus_api import guest, reasons, sources, validation
from stratus_api.v1alpha1 import Condition, Hypervisor, Instance, Network, Volume, image, instance
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


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://images.example/disk.img", "images.example"),
        ("https://user:pw@images.example:8443/a/b?c=d#e", "images.example"),
        ("http://[fd00::1]:8080/x", "fd00::1"),
        ("http://u:p@[::1]/", "::1"),
        ("http://10.0.0.5", "10.0.0.5"),
        ("http://images.example?q=a@b", "images.example"),  # '@' after the authority
        ("http://images.example#a@b", "images.example"),
    ],
)
def test_url_host_is_found_as_the_cel_rules_find_it(url: str, host: str) -> None:
    assert image.url_host(url) == host


def test_admission_refuses_no_source_the_default_policy_allows() -> None:
    """Admission's fixed list lies inside what agents and the operator refuse by default."""
    defaults = [ipaddress.ip_network(net) for net in sources.DEFAULT_REFUSED_NETWORKS]
    for text in image.REFUSED_SOURCE_NETWORKS:
        network = ipaddress.ip_network(text)
        assert any(
            network.version == default.version and network.subnet_of(default)  # type: ignore[arg-type]
            for default in defaults
        ), text


def test_hypervisor_allocation_defaults_match_the_crd() -> None:
    hypervisor = Hypervisor.model_validate(
        {
            "metadata": {"name": "hv"},
            "spec": {
                "endpoint": "https://10.0.0.5:8441",
                "tokenSecretRef": {"namespace": "stratus-system", "name": "t"},
            },
        }
    )
    spec = hypervisor.to_wire()["spec"]
    assert spec["allocationRatio"] == {"cpu": 4.0, "memory": 1.0}
    assert spec["reserved"] == {"cpu": 0, "memory": "512Mi"}
    # What the API server hands back after defaulting (JSON has no 4.0, only 4) reads the same.
    assert (
        validation.validate(
            {**hypervisor.to_wire(), "spec": {**spec, "allocationRatio": {"cpu": 4, "memory": 1}}}
        ).to_wire()["spec"]
        == spec
    )


def test_user_data_limit_is_the_guest_specs() -> None:
    assert instance.MAX_USER_DATA_BYTES == guest.MAX_USER_DATA_BYTES


def test_restart_request_is_kept_as_written_and_fits_the_guest_restart_token() -> None:
    longest = "2026-11-27T08:00:00.123456789+01:00"
    assert len(longest) == instance.RFC3339_MAX_LENGTH
    vm = Instance.model_validate(
        {
            "metadata": {"name": "a"},
            "spec": {
                "instanceType": "small",
                "boot": {"image": "i"},
                "restartRequestedAt": longest,
            },
        }
    )
    assert vm.to_wire()["spec"]["restartRequestedAt"] == longest  # the token, byte for byte
    token = guest.GuestSpec.model_fields["restart_token"]
    limits = [m.max_length for m in token.metadata if getattr(m, "max_length", None)]
    assert limits and limits[0] >= instance.RFC3339_MAX_LENGTH


def test_paused_is_a_run_strategy_and_a_phase() -> None:
    vm = Instance.model_validate(
        {
            "metadata": {"name": "a"},
            "spec": {"instanceType": "small", "boot": {"image": "i"}, "runStrategy": "Paused"},
            "status": {"phase": "Paused"},
        }
    )
    assert vm.spec.run_strategy is RunStrategy.PAUSED
    assert vm.status is not None and vm.status.phase is instance.InstancePhase.PAUSED


def test_condition_words_are_one_string_each() -> None:
    for words in (reasons.ConditionType, reasons.Reason, reasons.GuestFailure):
        assert len(words.__members__) == len(words), f"{words.__name__} has aliases"
        assert all(re.fullmatch("[A-Z][a-zA-Z]+", word) for word in words)
    # The operator finds these out itself, before the node would: the same words.
    shared = {str(word) for word in reasons.Reason} & {str(f) for f in reasons.GuestFailure}
    assert shared == {"DiskTooSmall", "VolumeNotFound", "VolumeInUse", "BackendUnsupported"}
    condition = Condition(type=reasons.ConditionType.READY, status="False",
                          reason=reasons.Reason.GUEST_PAUSED)  # fmt: skip
    assert condition.to_wire() == {"type": "Ready", "status": "False", "reason": "GuestPaused",
                                   "message": ""}  # fmt: skip
