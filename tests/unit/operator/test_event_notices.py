"""Which Events a status change calls for: the transitions a user acts on, once each."""

from __future__ import annotations

from typing import Any

from stratus_api.v1alpha1.image import ImageStatus
from stratus_api.v1alpha1.instance import InstanceStatus
from stratus_api.v1alpha1.volume import VolumeStatus
from stratus_operator.controllers.notices import Notice, notices


def ready(status: str, reason: str, message: str = "m") -> list[dict[str, Any]]:
    return [{"type": "Ready", "status": status, "reason": reason, "message": message,
             "lastTransitionTime": "2026-01-01T00:00:00Z"}]  # fmt: skip


def instance(**fields: Any) -> InstanceStatus:
    return InstanceStatus.model_validate(fields)


def test_an_instance_is_scheduled_started_stopped_and_restarted() -> None:
    pending = instance(phase="Pending")
    placed = instance(phase="Provisioning", node="n1", conditions=ready("False", "Provisioning"))
    running = instance(phase="Running", node="n1", conditions=ready("True", "Running"))
    assert notices("Instance", pending, placed) == [
        Notice("Normal", "Scheduled", "Placed on Hypervisor n1")]  # fmt: skip
    assert notices("Instance", placed, running) == [
        Notice("Normal", "Started", "Guest running on n1")]  # fmt: skip
    stopped = instance(phase="Stopped", node="n1", conditions=ready("False", "GuestStopped"))
    assert notices("Instance", running, stopped) == [Notice("Normal", "Stopped", "Guest stopped")]
    paused = instance(phase="Paused", node="n1", conditions=ready("False", "GuestPaused"))
    assert [n.reason for n in notices("Instance", paused, running)] == ["Unpaused"]
    again = running.model_copy(update={"restarts": 1, "last_restart_reason": "a guest crash"})
    assert notices("Instance", running, again) == [
        Notice("Normal", "Restarted", "Guest started again after a guest crash")]  # fmt: skip
    # The same status written again says nothing.
    assert notices("Instance", running, running) == []


def test_a_failure_is_a_warning_once_until_its_reason_or_message_changes() -> None:
    before = instance(phase="Scheduling")
    failing = instance(phase="Scheduling", conditions=ready("False", "Unschedulable", "0/1 fit"))
    assert notices("Instance", before, failing) == [
        Notice("Warning", "Unschedulable", "0/1 fit")]  # fmt: skip
    assert notices("Instance", failing, failing) == []
    worse = instance(phase="Scheduling", conditions=ready("False", "Unschedulable", "0/2 fit"))
    assert notices("Instance", failing, worse) == [Notice("Warning", "Unschedulable", "0/2 fit")]


def test_an_image_is_imported_or_failed_with_its_reason() -> None:
    pending = ImageStatus.model_validate({"phase": "Downloading"})
    done = ImageStatus.model_validate({"phase": "Ready", "conditions": ready("True", "Ready")})
    bad = ImageStatus.model_validate(
        {"phase": "Failed", "conditions": ready("False", "ChecksumMismatch", "sha256 differs")}
    )
    assert notices("Image", pending, done) == [
        Notice("Normal", "ImageImported", "Image imported and verified")]  # fmt: skip
    # One Warning: ImageFailed with the reason, not a second, generic one.
    assert notices("Image", pending, bad) == [
        Notice("Warning", "ImageFailed", "ChecksumMismatch: sha256 differs")]  # fmt: skip


def test_a_volume_is_attached_and_detached_per_instance() -> None:
    free = VolumeStatus.model_validate({"phase": "Available"})
    used = VolumeStatus.model_validate({"phase": "InUse", "attachedTo": "web,db"})
    assert notices("Volume", free, used) == [
        Notice("Normal", "Attached", "Attached to Instance db"),
        Notice("Normal", "Attached", "Attached to Instance web")]  # fmt: skip
    one = VolumeStatus.model_validate({"phase": "InUse", "attachedTo": "db"})
    assert notices("Volume", used, one) == [
        Notice("Normal", "Detached", "Detached from Instance web")]  # fmt: skip
