"""CephAccess on the wire: the cephx key is masked everywhere but the JSON sent to the agent,
and every spec that names a ceph volume carries one."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from stratus_api import guest, volume_wire

KEY = "AQD1bXxlAAAAABAAsecretsecretsecretsecretsecret=="
POOL_UID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
VOLUME_UID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"


def access(**changes: Any) -> dict[str, Any]:
    return {
        "poolUid": POOL_UID,
        "monitors": ["127.0.0.1:3300", "[::1]:6789", "mon.example"],
        "pool": "stratus",
        "user": "stratus",
        "key": KEY,
        **changes,
    }


def test_the_key_is_masked_in_repr_and_str_and_sent_in_full_as_json() -> None:
    model = volume_wire.CephAccess.model_validate(access())
    assert KEY not in repr(model) and KEY not in str(model)
    assert KEY not in repr(model.model_dump())  # a Python dump keeps the SecretStr
    assert json.loads(model.model_dump_json(by_alias=True))["key"] == KEY
    assert model.key.get_secret_value() == KEY


def test_the_key_survives_a_round_trip_through_the_wire() -> None:
    spec = volume_wire.NodeVolumeSpec.model_validate(
        {"uid": VOLUME_UID, "name": "data", "namespace": "team-a", "generation": 1,
         "backend": "ceph", "sizeBytes": 2**30, "ceph": access()}
    )  # fmt: skip
    text = spec.model_dump_json(by_alias=True)
    again = volume_wire.NodeVolumeSpec.model_validate_json(text)
    assert again == spec and again.ceph is not None
    assert again.ceph.key.get_secret_value() == KEY
    assert KEY not in repr(again)


@pytest.mark.parametrize(
    "changes",
    [{"monitors": []}, {"monitors": ["a b:1"]}, {"poolUid": "../x"}, {"user": "client admin"}],
)
def test_bad_access_is_refused_without_echoing_the_key(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        volume_wire.CephAccess.model_validate(access(**changes))
    assert KEY not in str(caught.value)


def test_every_spec_naming_a_ceph_volume_needs_its_access() -> None:
    volume = {"uid": VOLUME_UID, "name": "data", "namespace": "team-a", "generation": 1,
              "backend": "ceph", "sizeBytes": 2**30}  # fmt: skip
    snapshot = {"uid": VOLUME_UID, "name": "s", "namespace": "team-a", "generation": 1,
                "backend": "ceph", "volume": VOLUME_UID}  # fmt: skip
    disk = {"uid": VOLUME_UID, "backend": "ceph", "serial": "6f1c2a3b4d5e4f608a7b"}
    for model, data in (
        (volume_wire.NodeVolumeSpec, volume),
        (volume_wire.NodeSnapshotSpec, snapshot),
        (guest.VolumeDisk, disk),
    ):
        with pytest.raises(ValidationError, match="required when backend is ceph"):
            model.model_validate(data)
        assert model.model_validate({**data, "ceph": access()}).ceph is not None
        # Other backends need none.
        assert model.model_validate({**data, "backend": "file"}).ceph is None


def test_a_guest_spec_carries_the_key_to_the_agent_only() -> None:
    disk = guest.VolumeDisk.model_validate(
        {"uid": VOLUME_UID, "backend": "ceph", "serial": "6f1c2a3b4d5e4f608a7b", "ceph": access()}
    )
    assert KEY not in repr(disk)
    assert json.loads(disk.model_dump_json(by_alias=True))["ceph"]["key"] == KEY
