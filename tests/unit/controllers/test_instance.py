"""Instance resolution into a guest spec, and agent reports into status."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from stratus_api.guest import GuestState, GuestStatus, PowerState
from stratus_api.v1alpha1 import Image, Instance, InstanceType, Network
from stratus_api.v1alpha1.image import ImagePhase, ImageStatus
from stratus_api.v1alpha1.instance import InstancePhase, InstanceStatus
from stratus_operator.controllers import conditions
from stratus_operator.controllers.instance import (
    InstanceProblem,
    Wanted,
    check_image,
    guest_spec,
    nic_for,
    resolve_size,
    with_guest_status,
)
from stratus_operator.controllers.ipam import Allocation
from stratus_operator.services import instances

UID = "6295dea5-ce37-4888-9124-91b65ededffc"


def instance(**spec: Any) -> Instance:
    body: dict[str, Any] = {"instanceType": "small", "boot": {"image": "img"}}
    body.update(spec)
    return Instance.model_validate(
        {"metadata": {"name": "web", "namespace": "t", "uid": UID, "generation": 3},
         "spec": body}
    )  # fmt: skip


SMALL = InstanceType.model_validate(
    {"metadata": {"name": "small"}, "spec": {"cpu": 2, "memory": "1Gi", "disk": "4Gi"}}
)
IMAGE = Image.model_validate(
    {"metadata": {"name": "img", "namespace": "t", "uid": "1f1f1f1f-0000-0000-0000-000000000001"},
     "spec": {"source": {"http": {"url": "http://h/i.qcow2", "sha256": "a" * 64}},
              "format": "qcow2", "minMemory": "512Mi"}}
)  # fmt: skip


def test_size_comes_from_the_type_with_overrides() -> None:
    size = resolve_size(instance(), SMALL)
    assert (size.cpu, size.memory_bytes, size.disk_bytes) == (2, 2**30, 4 * 2**30)
    size = resolve_size(instance(cpu=4, boot={"image": "img", "diskSize": "8Gi"}), SMALL)
    assert (size.cpu, size.memory_bytes, size.disk_bytes) == (4, 2**30, 8 * 2**30)
    with pytest.raises(InstanceProblem) as caught:
        resolve_size(instance(), None)
    assert caught.value.reason == "InstanceTypeNotFound" and caught.value.retry
    assert str(caught.value).startswith("spec.instanceType:")


def test_image_requirements() -> None:
    with pytest.raises(InstanceProblem) as caught:
        check_image(instance(memory="256Mi"), IMAGE, resolve_size(instance(memory="256Mi"), SMALL))
    assert caught.value.reason == "MemoryTooSmall" and not caught.value.retry
    assert caught.value.field == "spec.memory"
    with pytest.raises(InstanceProblem, match="Image img not found"):
        check_image(instance(), None, resolve_size(instance(), SMALL))


def test_waiting_problems_name_what_they_wait_on() -> None:
    """The waiter index keys them by (kind, namespace, name); a problem only the user can
    fix waits on nothing."""
    size = resolve_size(instance(), SMALL)
    with pytest.raises(InstanceProblem) as caught:
        check_image(instance(), None, size)
    assert caught.value.waits_on == ("Image", "t", "img")
    assert instances.waits_on(caught.value) == ("Image", "t", "img")
    pending = IMAGE.model_copy(update={"status": ImageStatus(phase=ImagePhase.DOWNLOADING)})
    with pytest.raises(InstanceProblem, match="is Downloading, not Ready yet") as caught:
        check_image(instance(), pending, size)
    assert instances.waits_on(caught.value) == ("Image", "t", "img")
    with pytest.raises(InstanceProblem) as caught:
        resolve_size(instance(), None)
    assert instances.waits_on(caught.value) == ("InstanceType", "", "small")
    failed = IMAGE.model_copy(update={"status": ImageStatus(phase=ImagePhase.FAILED)})
    with pytest.raises(InstanceProblem) as caught:
        check_image(instance(), failed, size)
    assert caught.value.reason == "ImageFailed" and instances.waits_on(caught.value) is None


def test_guest_spec_is_self_contained() -> None:
    web = instance(userData="#!/bin/sh\necho secret", runStrategy="Halted",
                   sshKeys=["ssh-ed25519 AAAAC3 me@host"])  # fmt: skip
    network = Network.model_validate(
        {"metadata": {"name": "net", "uid": "2e2e2e2e-0000-0000-0000-000000000002"},
         "spec": {"type": "overlay", "subnets": [{"cidr": "10.0.0.0/24"}]}}
    )  # fmt: skip
    nic = nic_for(
        network,
        Allocation("10.0.0.5", 24, "10.0.0.1", ("10.0.0.1",)),
        "52:54:00:0a:0b:0c",
        ["default/default"],
    )
    spec = guest_spec(
        web, resolve_size(web, SMALL), IMAGE, [nic], (web.spec.user_data or "").encode()
    )
    assert spec.uid == UID and spec.generation == 3 and spec.power is PowerState.STOPPED
    assert spec.disks[0].image is not None and spec.disks[0].image.sha256 == "a" * 64
    assert spec.disks[0].size_bytes == 4 * 2**30
    assert spec.nics[0].mtu == 1450  # overlay default
    assert spec.cloud_init.hostname == "web" and spec.cloud_init.ssh_keys
    assert "secret" not in repr(spec)  # user-data is masked outside the wire format
    wire = json.loads(spec.model_dump_json(by_alias=True))  # base64 on the wire
    assert base64.b64decode(wire["cloudInit"]["userData"]) == b"#!/bin/sh\necho secret"


RUNNING, STOPPED, PAUSED = (Wanted(PowerState.RUNNING), Wanted(PowerState.STOPPED),
                            Wanted(PowerState.PAUSED))  # fmt: skip


@pytest.mark.parametrize(
    ("state", "wanted", "phase", "ready", "reason", "kstatus"),
    [
        (GuestState.PROVISIONING, RUNNING, InstancePhase.PROVISIONING, False, "Provisioning",
         "Reconciling"),
        (GuestState.RUNNING, RUNNING, InstancePhase.RUNNING, True, "GuestRunning", None),
        (GuestState.STOPPED, STOPPED, InstancePhase.STOPPED, False, "GuestStopped", None),
        # runStrategy Always: the node restarts it, so the Instance is reconciling, not done.
        (GuestState.STOPPED, RUNNING, InstancePhase.STOPPED, False, "GuestRestarting",
         "Reconciling"),
        (GuestState.CRASHED, STOPPED, InstancePhase.FAILED, False, "GuestCrashed", None),
        # Paused is a phase of its own, settled when asked for, on the way otherwise.
        (GuestState.PAUSED, PAUSED, InstancePhase.PAUSED, False, "GuestPaused", None),
        (GuestState.PAUSED, RUNNING, InstancePhase.PAUSED, False, "Progressing", "Reconciling"),
        (GuestState.RUNNING, PAUSED, InstancePhase.RUNNING, False, "Progressing", "Reconciling"),
        # A restart asked for and not yet done by the node.
        (GuestState.RUNNING, Wanted(PowerState.RUNNING, "2026-11-27T08:00:00Z"),
         InstancePhase.RUNNING, False, "GuestRestarting", "Reconciling"),
    ],
)  # fmt: skip
def test_reports_become_phase_ready_and_kstatus(
    state: GuestState,
    wanted: Wanted,
    phase: InstancePhase,
    ready: bool,
    reason: str,
    kstatus: str | None,
) -> None:
    status = InstanceStatus(node="hv-1")
    guest = GuestStatus(uid=UID, state=state, generation=3)
    updated = with_guest_status(status, guest, 3, wanted)
    found = conditions.condition(updated.conditions, "Ready")
    assert updated.phase is phase and updated.observed_generation == 3
    assert found is not None and found.reason == reason
    assert conditions.is_true(updated.conditions, "Ready") is ready
    for kind in ("Reconciling", "Stalled"):
        assert conditions.is_true(updated.conditions, kind) is (kind == kstatus)


def test_a_restart_done_by_the_node_settles_and_is_recorded() -> None:
    token = "2026-11-27T08:00:00Z"
    guest = GuestStatus(uid=UID, state=GuestState.RUNNING, restart_token=token)
    wanted = Wanted(PowerState.RUNNING, token)
    status = with_guest_status(InstanceStatus(node="hv"), guest, 1, wanted)
    assert conditions.is_true(status.conditions, "Ready")
    assert status.last_restart_request_handled == token


def test_a_report_ahead_of_the_placement_write_names_the_node_placed_on() -> None:
    guest = GuestStatus(uid=UID, state=GuestState.PROVISIONING, generation=1)
    status = with_guest_status(InstanceStatus(), guest, 1, RUNNING, placed_on="hv-2")
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert ready.message == "being prepared on hv-2"
    written = with_guest_status(InstanceStatus(node="hv"), guest, 1, RUNNING, placed_on="hv-2")
    assert next(c for c in written.conditions if c.type == "Ready").message == (
        "being prepared on hv"  # what the status says wins
    )


def test_failures_carry_the_agents_reason_and_keep_transition_times() -> None:
    failed = GuestStatus(uid=UID, state=GuestState.FAILED, reason="ImageChecksumMismatch",
                         message="image img: downloaded file has sha256 b...")  # fmt: skip
    status = with_guest_status(InstanceStatus(node="hv"), failed, 1, RUNNING)
    again = with_guest_status(status, failed, 1, RUNNING)
    first = conditions.condition(status.conditions, "Ready")
    second = conditions.condition(again.conditions, "Ready")
    assert first is not None and second is not None
    assert first.reason == "ImageChecksumMismatch" and "sha256" in first.message
    assert first.last_transition_time == second.last_transition_time
    # The user must act (a bad image): Stalled, not Reconciling, and the phase says Failed.
    assert conditions.is_true(status.conditions, "Stalled")
    assert not conditions.is_true(status.conditions, "Reconciling")
    assert status.phase is InstancePhase.FAILED


def test_a_guest_paused_by_an_error_stalls_its_instance_and_says_why() -> None:
    """QEMU paused the guest itself (here on a disk I/O error): nothing resumes it, so the
    Instance is Stalled, with the node's reason and what to do, whatever its runStrategy."""
    paused = GuestStatus(uid=UID, state=GuestState.PAUSED, reason="PausedOnError",
                         message="QEMU paused the guest on a disk I/O error")  # fmt: skip
    for wanted in (RUNNING, PAUSED):
        status = with_guest_status(InstanceStatus(node="hv"), paused, 1, wanted)
        ready = conditions.condition(status.conditions, "Ready")
        assert ready is not None and ready.reason == "PausedOnError"
        assert "disk I/O error" in ready.message and "restart" in ready.message
        assert conditions.is_true(status.conditions, "Stalled")
        assert not conditions.is_true(status.conditions, "Reconciling")
        assert status.phase is InstancePhase.PAUSED


def test_transient_failures_keep_reconciling() -> None:
    failed = GuestStatus(uid=UID, state=GuestState.FAILED, reason="NetworkSetupFailed",
                         message="ovs-vsctl: bridge missing")  # fmt: skip
    status = with_guest_status(InstanceStatus(node="hv"), failed, 1, RUNNING)
    assert conditions.is_true(status.conditions, "Reconciling")
    assert not conditions.is_true(status.conditions, "Stalled")
    assert status.phase is InstancePhase.PROVISIONING


def test_restarts_are_counted_from_the_nodes_reports() -> None:
    restarted = GuestStatus(uid=UID, state=GuestState.RUNNING, restarts=2,
                            last_restart_reason="Crashed")  # fmt: skip
    status = with_guest_status(InstanceStatus(node="hv"), restarted, 1, RUNNING)
    assert status.restarts == 2 and status.last_restart_reason == "Crashed"
