"""How libvirt's domain states and lifecycle events read as guest states: a pause nobody
asked for says what caused it; a domain still starting is not reported Paused."""

from __future__ import annotations

import libvirt

from stratus_agent.drivers.compute.libvirt_driver import _event_status, _state_status
from stratus_api.guest import GuestState

UID = "0b7f7c3e-1111-2222-3333-444455556666"


def test_a_pause_on_a_disk_error_says_so_and_one_asked_for_does_not() -> None:
    on_error = _state_status(UID, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR)
    assert (on_error.state, on_error.reason) == (GuestState.PAUSED, "PausedOnError")
    assert "disk I/O error" in on_error.message
    asked = _state_status(UID, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER)
    assert (asked.state, asked.reason, asked.message) == (GuestState.PAUSED, "", "")


def test_a_domain_starting_up_is_provisioning_not_paused() -> None:
    # libvirt starts QEMU with its vCPUs stopped: paused, reason "starting up".
    starting = _state_status(UID, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP)
    assert starting.state is GuestState.PROVISIONING
    running = _state_status(UID, libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED)
    assert running.state is GuestState.RUNNING


def test_suspended_events_carry_the_cause_of_an_unasked_pause() -> None:
    event = libvirt.VIR_DOMAIN_EVENT_SUSPENDED
    watchdog = _event_status(UID, event, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG)
    assert watchdog is not None and watchdog.reason == "PausedOnError"
    assert "watchdog" in watchdog.message
    asked = _event_status(UID, event, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED)
    assert asked is not None and (asked.state, asked.reason) == (GuestState.PAUSED, "")
    resumed = _event_status(UID, libvirt.VIR_DOMAIN_EVENT_RESUMED, 0)
    assert resumed is not None and (resumed.state, resumed.reason) == (GuestState.RUNNING, "")
    assert _event_status(UID, libvirt.VIR_DOMAIN_EVENT_DEFINED, 0) is None
