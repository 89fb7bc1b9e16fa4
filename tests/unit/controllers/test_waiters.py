"""The waiter index: which Instances wait on which objects, and when to look again."""

from __future__ import annotations

from stratus_operator.controllers import waiters
from stratus_operator.controllers.waiters import Waiters

NET = (waiters.NETWORK, "ns", "back")
IMG = (waiters.IMAGE, "ns", "img")


def test_a_dependency_wakes_its_waiters_once() -> None:
    index = Waiters()
    assert index.wait("a", NET, due=60.0)
    assert index.wait("b", NET, due=60.0)
    assert index.wait("c", IMG, due=60.0)
    assert index.waiting(NET) and index.waiting_on("a") == NET
    assert index.wake(NET) == ["a", "b"]
    assert index.wake(NET) == []  # let go: the run puts them back if they still wait
    assert not index.waiting(NET) and "a" not in index and "c" in index
    assert index.wake((waiters.NETWORK, "other", "back")) == []


def test_waiting_on_another_dependency_moves_the_waiter() -> None:
    index = Waiters()
    index.wait("a", IMG, due=60.0)
    index.wait("a", NET, due=60.0)  # the Image is there; now the Network is missing
    assert index.wake(IMG) == []
    assert index.wake(NET) == ["a"]


def test_progress_or_deletion_forgets_the_waiter() -> None:
    index = Waiters()
    index.wait("a", NET, due=60.0)
    index.forget("a")
    assert index.wake(NET) == [] and len(index) == 0 and index.next_due() is None


def test_a_wake_during_the_reconcile_runs_it_again_at_once() -> None:
    """The reconcile read the Network missing, then the Network's event came, then the
    reconcile failed: waiting for the next event would miss this one."""
    index = Waiters()
    since = index.tick()
    assert index.wake(NET) == []  # nobody waits yet
    assert not index.wait("a", NET, due=60.0, since=since)
    assert "a" not in index
    later = index.tick()
    assert index.wait("a", NET, due=60.0, since=later)
    index.gone(NET)  # the Network is deleted: its mark goes, the waiter stays
    assert index.wait("b", NET, due=60.0, since=since) and index.wake(NET) == ["a", "b"]


def test_safety_retries_come_due_in_order_and_stale_ones_are_skipped() -> None:
    index = Waiters()
    index.wait("a", NET, due=30.0)
    index.wait("b", IMG, due=10.0)
    index.wait("a", IMG, due=50.0)  # replaces a's first entry
    assert index.next_due() == 10.0
    assert index.due(9.0) == []
    assert index.due(40.0) == ["b"]
    assert index.next_due() == 50.0
    assert index.due(50.0) == ["a"] and len(index) == 0


def test_retries_not_about_a_dependency_count_their_attempts() -> None:
    index = Waiters()
    assert index.attempts("a") == 0
    index.retry("a", due=2.0)
    assert index.due(2.0) == ["a"] and index.attempts("a") == 1
    index.retry("a", due=6.0)
    assert index.attempts("a") == 2 and index.waiting_on("a") is None
    index.wait("a", NET, due=60.0)  # waiting on a dependency starts the count again
    assert index.attempts("a") == 0
    index.retry("a", due=2.0)
    index.forget("a")
    assert index.attempts("a") == 0


def test_which_states_of_a_dependency_may_let_waiters_go() -> None:
    def ready(status: str) -> dict[str, object]:
        return {"status": {"conditions": [{"type": "Ready", "status": status}]}}

    assert waiters.may_progress(waiters.NETWORK, ready("True"))
    assert not waiters.may_progress(waiters.NETWORK, ready("False"))
    assert not waiters.may_progress(waiters.NETWORK, {})  # no segment yet
    assert waiters.may_progress(waiters.IMAGE, {"status": {"phase": "Ready"}})
    assert waiters.may_progress(waiters.IMAGE, {"status": {"phase": "Failed"}})
    assert not waiters.may_progress(waiters.IMAGE, {"status": {"phase": "Pending"}})
    assert not waiters.may_progress(waiters.IMAGE, {})
    assert waiters.may_progress(waiters.VOLUME, {})  # new: the Instance binds it
    assert waiters.may_progress(waiters.VOLUME, {"status": {"phase": "Available"}})
    assert not waiters.may_progress(waiters.VOLUME, {"status": {"phase": "Creating"}})
    assert waiters.may_progress(waiters.INSTANCE_TYPE, {"spec": {"cpu": 1}})
