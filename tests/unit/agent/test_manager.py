"""GuestManager's self-healing with the fake compute driver: retries of transient failures,
restarts of guests that stopped on their own (runStrategy Always), restart counts on disk.

Pure policy over in-memory drivers; the same behaviour on real libvirt and OVS is in
tests/integration/agent/test_recovery.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from stratus_agent import main as agent_main
from stratus_agent.api.events import EventHub
from stratus_agent.base import NodeFacts
from stratus_agent.drivers.compute.fake import FakeComputeDriver
from stratus_agent.errors import ProvisioningError
from stratus_agent.manager.guests import GuestManager
from stratus_agent.manager.recovery import Backoff, RecoveryPolicy, RestartBook, RestartRecord
from stratus_api.guest import GuestSpec, GuestState, GuestStatus, PowerState
from stratus_api.reasons import GuestFailure
from testsupport import guest_spec, until

FAST = RecoveryPolicy(
    retry=Backoff(0.01, 0.05), restart=Backoff(0.01, 0.05), node_check_seconds=0.01
)


class FlakyProvisioner:
    """The fake-mode provisioner, failing with `failing` while it is set; counts prepares
    and node checks."""

    def __init__(self, directory: Path) -> None:
        self.inner = agent_main.fake_provisioner(directory)
        self.failing: Exception | None = None
        self.prepares = 0
        self.node_checks = 0

    async def prepare(self, spec: GuestSpec) -> NodeFacts:
        self.prepares += 1
        if self.failing is not None:
            raise self.failing
        return await self.inner.prepare(spec)

    async def check_node(self) -> None:
        self.node_checks += 1

    async def settle(self, spec: GuestSpec) -> None:
        await self.inner.settle(spec)

    async def cleanup(self, uid: str) -> None:
        await self.inner.cleanup(uid)


@dataclass
class Node:
    manager: GuestManager
    compute: FakeComputeDriver
    provisioner: FlakyProvisioner
    book: RestartBook


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    compute = FakeComputeDriver()
    provisioner = FlakyProvisioner(tmp_path)
    book = RestartBook(tmp_path)
    manager = GuestManager(compute, provisioner, EventHub(), policy=FAST, restarts=book)
    await manager.start()
    yield Node(manager, compute, provisioner, book)
    await manager.stop()


def state(manager: GuestManager, uid: str) -> GuestStatus | None:
    return manager.status(uid)


def is_state(manager: GuestManager, uid: str, wanted: GuestState) -> Callable[[], bool]:
    return lambda: (status := manager.status(uid)) is not None and status.state is wanted


def spec(**overrides: object) -> GuestSpec:
    return GuestSpec.model_validate(guest_spec(**overrides))


async def test_a_transient_failure_is_reported_then_retried_until_it_heals(node: Node) -> None:
    node.provisioner.failing = ProvisioningError(GuestFailure.NETWORK_SETUP_FAILED, "no bridge")
    guest = spec()
    await node.manager.ensure(guest)
    await until("Failed", is_state(node.manager, guest.uid, GuestState.FAILED))
    failed = node.manager.status(guest.uid)
    assert failed is not None
    assert (failed.reason, failed.message) == ("NetworkSetupFailed", "no bridge")
    await until("a few retries", lambda: node.provisioner.prepares >= 3)

    node.provisioner.failing = None
    await until("Running", is_state(node.manager, guest.uid, GuestState.RUNNING))


async def test_an_unexpected_exception_counts_as_a_transient_agent_error(node: Node) -> None:
    node.provisioner.failing = RuntimeError("surprise")
    guest = spec()
    await node.manager.ensure(guest)
    await until("Failed", is_state(node.manager, guest.uid, GuestState.FAILED))
    failed = node.manager.status(guest.uid)
    assert failed is not None and failed.reason == "AgentError"
    assert "RuntimeError: surprise" in failed.message
    node.provisioner.failing = None
    await until("Running", is_state(node.manager, guest.uid, GuestState.RUNNING))


async def test_a_permanent_failure_is_not_retried_but_the_same_spec_again_is(
    node: Node,
) -> None:
    node.provisioner.failing = ProvisioningError(GuestFailure.DISK_TOO_SMALL, "too small")
    guest = spec()
    await node.manager.ensure(guest)
    await until("Failed", is_state(node.manager, guest.uid, GuestState.FAILED))
    await asyncio.sleep(0.2)  # many retry intervals of FAST
    assert node.provisioner.prepares == 1

    node.provisioner.failing = None  # e.g. the user freed what was missing
    accepted = await node.manager.ensure(guest)
    assert accepted.state is GuestState.PROVISIONING
    await until("Running", is_state(node.manager, guest.uid, GuestState.RUNNING))


async def test_a_newer_spec_cuts_a_backoff_short(tmp_path: Path) -> None:
    compute, provisioner = FakeComputeDriver(), FlakyProvisioner(tmp_path)
    slow = RecoveryPolicy(retry=Backoff(600, 600))
    manager = GuestManager(compute, provisioner, EventHub(), policy=slow)
    await manager.start()
    try:
        provisioner.failing = ProvisioningError(GuestFailure.AGENT_ERROR, "flaky")
        guest = spec()
        await manager.ensure(guest)
        await until("Failed", is_state(manager, guest.uid, GuestState.FAILED))
        await manager.ensure(guest)  # the same spec: the task already retries it
        await asyncio.sleep(0.05)
        assert provisioner.prepares == 1

        provisioner.failing = None
        await manager.ensure(guest.model_copy(update={"generation": 2}))
        await until("Running", is_state(manager, guest.uid, GuestState.RUNNING))
        status = manager.status(guest.uid)
        assert status is not None and status.generation == 2
    finally:
        await manager.stop()


@pytest.mark.parametrize(
    ("stop", "reason"), [("crash", "Crashed"), ("power_off", "StoppedOutsideStratus")]
)
async def test_a_guest_that_stops_on_its_own_is_started_again_and_counted(
    node: Node, stop: str, reason: str
) -> None:
    guest = spec()
    await node.manager.ensure(guest)
    await until("Running", is_state(node.manager, guest.uid, GuestState.RUNNING))

    getattr(node.compute, stop)(guest.uid)
    await until("restarted", lambda: (s := state(node.manager, guest.uid)) and s.restarts == 1)
    await until("Running", is_state(node.manager, guest.uid, GuestState.RUNNING))
    status = node.manager.status(guest.uid)
    assert status is not None and status.last_restart_reason == reason
    listed = {s.uid: s for s in await node.manager.inventory()}
    assert (listed[guest.uid].restarts, listed[guest.uid].last_restart_reason) == (1, reason)

    getattr(node.compute, stop)(guest.uid)
    await until(
        "restarted again", lambda: (s := state(node.manager, guest.uid)) and s.restarts == 2
    )


async def test_an_event_during_the_inventory_read_is_not_undone_by_it(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guest that changes while the driver is being read (its event recorded before the
    read returns) is listed as the event says, and no newer than it: the read saw it before."""
    guest = spec()
    await node.manager.ensure(guest)
    await until("Running", is_state(node.manager, guest.uid, GuestState.RUNNING))
    read = node.compute.list

    async def read_then_event() -> list[GuestStatus]:
        listed = await read()  # the guest still Running here
        node.compute.event(guest.uid, GuestState.PAUSED)
        return listed

    monkeypatch.setattr(node.compute, "list", read_then_event)
    listed = {s.uid: s for s in await node.manager.inventory()}
    event = node.manager.status(guest.uid)
    assert event is not None and event.state is GuestState.PAUSED
    assert listed[guest.uid].state is GuestState.PAUSED
    assert listed[guest.uid].sequence == event.sequence

    monkeypatch.setattr(node.compute, "list", read)
    node.compute.event(guest.uid, GuestState.RUNNING)
    again = {s.uid: s for s in await node.manager.inventory()}[guest.uid]
    assert again.state is GuestState.RUNNING
    assert (again.sequence or 0) > (node.manager.status(guest.uid).sequence or 0)  # type: ignore[union-attr]


async def test_a_halted_guest_is_never_restarted(node: Node) -> None:
    guest = spec(power="Stopped")
    await node.manager.ensure(guest)
    await until("Stopped", is_state(node.manager, guest.uid, GuestState.STOPPED))
    node.compute.crash(guest.uid)
    await asyncio.sleep(0.2)
    status = node.manager.status(guest.uid)
    assert status is not None and status.state is GuestState.CRASHED and status.restarts == 0


async def test_restart_backoff_doubles_and_starts_afresh_after_a_stable_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    delays: list[float] = []
    policy = RecoveryPolicy(restart=Backoff(0.01, 0.04), restart_stable_seconds=0.3)
    manager = GuestManager(
        FakeComputeDriver(), FlakyProvisioner(tmp_path), EventHub(), policy=policy
    )
    compute = manager.compute
    assert isinstance(compute, FakeComputeDriver)
    original = manager._spawn

    def spy(uid: str, delay: float = 0.0, restart_reason: str | None = None) -> None:
        if restart_reason is not None:
            delays.append(delay)
        original(uid, delay, restart_reason)

    monkeypatch.setattr(manager, "_spawn", spy)
    await manager.start()
    try:
        guest = spec()
        await manager.ensure(guest)
        for count in range(1, 5):
            await until("Running", is_state(manager, guest.uid, GuestState.RUNNING))
            compute.crash(guest.uid)
            await until(
                "restart", lambda n=count: (s := state(manager, guest.uid)) and s.restarts == n
            )  # type: ignore[misc]
        assert delays == [0.01, 0.02, 0.04, 0.04]
        await until("Running", is_state(manager, guest.uid, GuestState.RUNNING))
        await asyncio.sleep(0.35)  # stayed up longer than restart_stable_seconds
        compute.crash(guest.uid)
        await until("restart", lambda: (s := state(manager, guest.uid)) and s.restarts == 5)
        assert delays[-1] == 0.01
    finally:
        await manager.stop()


async def test_restart_counts_survive_an_agent_restart_and_go_with_the_guest(
    tmp_path: Path,
) -> None:
    compute, provisioner, book = (
        FakeComputeDriver(),
        FlakyProvisioner(tmp_path),
        RestartBook(tmp_path),
    )
    first = GuestManager(compute, provisioner, EventHub(), policy=FAST, restarts=book)
    await first.start()
    guest = spec()
    await first.ensure(guest)
    await until("Running", is_state(first, guest.uid, GuestState.RUNNING))
    compute.crash(guest.uid)
    await until("restarted", lambda: (s := state(first, guest.uid)) and s.restarts == 1)
    await until("Running", is_state(first, guest.uid, GuestState.RUNNING))
    await first.stop()
    saved = json.loads((tmp_path / f"{guest.uid}-restarts.json").read_text())
    assert saved == {"restarts": 1, "lastReason": "Crashed", "restartToken": None}

    second = GuestManager(compute, provisioner, EventHub(), policy=FAST, restarts=book)
    await second.start()  # the same driver: the guest is still there, still running
    try:
        status = second.status(guest.uid)
        assert status is not None and (status.restarts, status.last_restart_reason) == (
            1,
            "Crashed",
        )
        assert await second.delete(guest.uid)
        assert not (tmp_path / f"{guest.uid}-restarts.json").exists()
    finally:
        await second.stop()


async def test_a_deleted_guest_is_not_restarted(node: Node) -> None:
    guest = spec()
    await node.manager.ensure(guest)
    await until("Running", is_state(node.manager, guest.uid, GuestState.RUNNING))
    node.compute.power_off(guest.uid)  # a restart is now pending
    assert await node.manager.delete(guest.uid)
    await asyncio.sleep(0.2)
    assert await node.compute.list() == []
    assert node.manager.status(guest.uid) is None


async def test_the_node_is_checked_periodically(node: Node) -> None:
    await until("node checks", lambda: node.provisioner.node_checks >= 3)


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(1.0, 300.0)
    assert [backoff.delay(n) for n in range(10)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert backoff.delay(10_000) == 300.0


def test_unreadable_restart_records_are_skipped(tmp_path: Path) -> None:
    book = RestartBook(tmp_path)
    good = spec().uid
    (tmp_path / f"{good}-restarts.json").write_text('{"restarts": 2, "lastReason": "Crashed"}')
    (tmp_path / f"{spec().uid}-restarts.json").write_text("{not json")
    (tmp_path / "..-restarts.json").write_text('{"restarts": 1, "lastReason": "x"}')
    assert list(book.load_all()) == [good]
    with pytest.raises(ValueError, match="not a Kubernetes UID"):
        book.path("../../etc")


# Lifecycle verbs: Paused, and restarts asked for by a new restart token.


async def test_a_paused_guest_reports_paused_resumes_and_stops(node: Node) -> None:
    guest = spec(power="Paused")
    await node.manager.ensure(guest)
    await until("Paused", is_state(node.manager, guest.uid, GuestState.PAUSED))
    assert node.compute.boots[guest.uid] == 1  # started, then suspended

    running = guest.model_copy(update={"generation": 2, "power": PowerState.RUNNING})
    await node.manager.ensure(running)
    await until("Running", is_state(node.manager, guest.uid, GuestState.RUNNING))
    assert node.compute.boots[guest.uid] == 1  # resumed where it was, not booted again

    paused = running.model_copy(update={"generation": 3, "power": PowerState.PAUSED})
    await node.manager.ensure(paused)
    await until("Paused", is_state(node.manager, guest.uid, GuestState.PAUSED))
    stopped = paused.model_copy(update={"generation": 4, "power": PowerState.STOPPED})
    await node.manager.ensure(stopped)
    await until("Stopped", is_state(node.manager, guest.uid, GuestState.STOPPED))
    assert node.compute.boots[guest.uid] == 1


async def test_a_paused_guest_that_goes_down_comes_back_paused(node: Node) -> None:
    guest = spec(power="Paused")
    await node.manager.ensure(guest)
    await until("Paused", is_state(node.manager, guest.uid, GuestState.PAUSED))
    node.compute.crash(guest.uid)
    await until("restarted", lambda: (s := state(node.manager, guest.uid)) and s.restarts == 1)
    await until("Paused", is_state(node.manager, guest.uid, GuestState.PAUSED))


async def test_a_new_restart_token_restarts_the_guest_once(node: Node) -> None:
    guest = spec(restartToken="first")
    await node.manager.ensure(guest)
    await until("Running", is_state(node.manager, guest.uid, GuestState.RUNNING))
    # The first spec a guest gets only adopts its token: creating it booted it.
    assert node.compute.boots[guest.uid] == 1
    status = node.manager.status(guest.uid)
    assert status is not None and status.restart_token == "first"

    again = guest.model_copy(update={"generation": 2, "restart_token": "second"})
    await node.manager.ensure(again)
    await until("restarted", lambda: node.compute.boots[guest.uid] == 2)
    await until(
        "token reported",
        lambda: (s := state(node.manager, guest.uid)) and s.restart_token == "second",
    )
    await node.manager.ensure(again)  # a repeated PUT of the same spec
    await node.manager.ensure(
        again.model_copy(update={"generation": 3})
    )  # other change, same token
    await until("generation 3", lambda: (s := state(node.manager, guest.uid)) and s.generation == 3)
    await asyncio.sleep(0.1)
    status = node.manager.status(guest.uid)
    assert node.compute.boots[guest.uid] == 2
    # Asked for, so not a crash: runStrategy Always's count stays as it was.
    assert status is not None and (status.state, status.restarts) == (GuestState.RUNNING, 0)
    saved = json.loads((node.book.directory / f"{guest.uid}-restarts.json").read_text())
    assert saved["restartToken"] == "second"


async def test_no_token_then_a_token_restarts_and_removing_it_restarts_again(node: Node) -> None:
    guest = spec()
    await node.manager.ensure(guest)
    await until("Running", is_state(node.manager, guest.uid, GuestState.RUNNING))
    await node.manager.ensure(guest.model_copy(update={"generation": 2, "restart_token": "t"}))
    await until("restarted", lambda: node.compute.boots[guest.uid] == 2)
    await node.manager.ensure(guest.model_copy(update={"generation": 3, "restart_token": None}))
    await until("restarted again", lambda: node.compute.boots[guest.uid] == 3)


async def test_a_token_acted_on_survives_an_agent_restart(tmp_path: Path) -> None:
    compute, book = FakeComputeDriver(), RestartBook(tmp_path)
    first = GuestManager(
        compute, FlakyProvisioner(tmp_path), EventHub(), policy=FAST, restarts=book
    )
    await first.start()
    guest = spec(restartToken="a")
    await first.ensure(guest)
    await until("Running", is_state(first, guest.uid, GuestState.RUNNING))
    newer = guest.model_copy(update={"generation": 2, "restart_token": "b"})
    await first.ensure(newer)
    await until("restarted", lambda: compute.boots[guest.uid] == 2)
    await until("applied", lambda: (s := state(first, guest.uid)) and s.restart_token == "b")
    await first.stop()

    second = GuestManager(
        compute, FlakyProvisioner(tmp_path), EventHub(), policy=FAST, restarts=book
    )
    await second.start()
    try:
        status = second.status(guest.uid)
        assert status is not None and status.restart_token == "b"
        await second.ensure(newer)  # the operator resyncs with the spec it had sent
        await until("generation 2", lambda: (s := state(second, guest.uid)) and s.generation == 2)
        await asyncio.sleep(0.1)
        assert compute.boots[guest.uid] == 2
    finally:
        await second.stop()


async def test_a_new_token_for_a_stopped_guest_is_acted_on_without_a_boot(node: Node) -> None:
    guest = spec(power="Stopped", restartToken="a")
    await node.manager.ensure(guest)
    await until("Stopped", is_state(node.manager, guest.uid, GuestState.STOPPED))
    stopped = guest.model_copy(update={"generation": 2, "restart_token": "b"})
    await node.manager.ensure(stopped)
    await until("token", lambda: (s := state(node.manager, guest.uid)) and s.restart_token == "b")
    assert node.compute.boots.get(guest.uid, 0) == 0
    # Started later with the same token: one boot, no extra restart.
    await node.manager.ensure(
        stopped.model_copy(update={"generation": 3, "power": PowerState.RUNNING})
    )
    await until("Running", is_state(node.manager, guest.uid, GuestState.RUNNING))
    await asyncio.sleep(0.1)
    assert node.compute.boots[guest.uid] == 1


async def test_a_driver_event_during_an_apply_is_about_the_spec_being_applied(
    tmp_path: Path,
) -> None:
    """Lifecycle events carry no generation: the manager adds the one it handed over."""
    compute = FakeComputeDriver(boot_delay=0.2)
    manager = GuestManager(compute, FlakyProvisioner(tmp_path), EventHub(), policy=FAST)
    await manager.start()
    try:
        guest = spec(power="Stopped")
        await manager.ensure(guest)
        await until("Stopped", is_state(manager, guest.uid, GuestState.STOPPED))
        await manager.ensure(
            guest.model_copy(update={"generation": 2, "power": PowerState.RUNNING})
        )
        await asyncio.sleep(0.05)  # the driver is at work on generation 2
        compute.event(guest.uid, GuestState.RUNNING)
        status = manager.status(guest.uid)
        assert status is not None and (status.state, status.generation) == (GuestState.RUNNING, 2)
    finally:
        await manager.stop()


def test_a_restart_record_saved_after_its_guests_delete_stays_gone(tmp_path: Path) -> None:
    """Saves run in worker threads that outlive a cancelled task; one landing after the
    delete must not leave `<uid>-restarts.json` behind."""
    book = RestartBook(tmp_path)
    uid = "0b7f7c3e-1111-2222-3333-444455556666"
    book.save(uid, RestartRecord(restarts=1))
    assert book.path(uid).exists()
    book.remove(uid)
    book.save(uid, RestartRecord(restarts=2))  # the late save
    assert not book.path(uid).exists()
    assert list(tmp_path.iterdir()) == []


async def test_reports_are_ordered_across_an_agent_restart(node: Node) -> None:
    hub = EventHub()
    with hub.subscribe() as events:
        manager = GuestManager(node.compute, node.provisioner, hub, policy=FAST)
        await manager.start()
        guest = spec()
        await manager.ensure(guest)
        await until("Running", is_state(manager, guest.uid, GuestState.RUNNING))
        await manager.stop()
        sequences = []
        while not events.empty():
            event = events.get_nowait()
            if event is not None and event.guest is not None:
                sequences.append(event.guest.sequence)
    assert len(sequences) >= 2 and sequences == sorted(set(sequences))  # type: ignore[type-var]
    # A new agent process lists the same guest: its report sorts after every earlier one.
    again = GuestManager(node.compute, node.provisioner, EventHub(), policy=FAST)
    await again.start()
    listed = again.status(guest.uid)
    await again.stop()
    assert listed is not None and listed.sequence is not None
    assert listed.sequence > sequences[-1]  # type: ignore[operator]


class DestroyedWhileStarting(FakeComputeDriver):
    """Starts the guest, then (before its answer gets back) someone destroys it: the
    answer says Running, the event after it says Stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.destroy_next = True

    async def ensure(
        self, spec: GuestSpec, facts: NodeFacts, *, restart: bool = False
    ) -> GuestStatus:
        answer = await super().ensure(spec, facts, restart=restart)
        if self.destroy_next:
            self.destroy_next = False
            self.event(spec.uid, GuestState.STOPPED)
        return answer


async def test_a_stop_reported_while_the_driver_worked_is_not_undone_by_its_answer(
    tmp_path: Path,
) -> None:
    compute = DestroyedWhileStarting()
    manager = GuestManager(compute, FlakyProvisioner(tmp_path), EventHub(), policy=FAST)
    await manager.start()
    try:
        guest = spec()
        await manager.ensure(guest)
        # Stopped on its own while runStrategy says Running: started again, counted once.
        await until("restarted", lambda: (s := manager.status(guest.uid)) is not None
                    and s.state is GuestState.RUNNING and s.restarts == 1)  # fmt: skip
    finally:
        await manager.stop()


@pytest.mark.parametrize(("boot_delay", "answered"), [
    (0.0, GuestState.RUNNING), (0.5, GuestState.PROVISIONING),
])  # fmt: skip
async def test_a_put_is_answered_with_the_settled_state_when_it_comes_in_time(
    tmp_path: Path, boot_delay: float, answered: GuestState
) -> None:
    """One status write per boot instead of two: a guest that settles within the answer
    window is answered Running; one that takes longer is answered Provisioning at the end
    of the window, and settles later all the same."""
    compute = FakeComputeDriver(boot_delay=boot_delay)
    provisioner = FlakyProvisioner(tmp_path)
    manager = GuestManager(compute, provisioner, EventHub(), policy=FAST, answer_within=0.1)
    await manager.start()
    try:
        guest = spec()
        # Provisioning for the slow one: answered at the end of the window, before it settled.
        assert (await manager.ensure(guest)).state is answered
        await until("Running", is_state(manager, guest.uid, GuestState.RUNNING))
    finally:
        await manager.stop()
