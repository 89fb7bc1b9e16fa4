"""Daemons and their records, with real processes: what proves a pid ours, and stopping
from nothing but the record."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratus_devcloud import processes
from stratus_devcloud.processes import Daemon, State, Tracked
from testsupport import wait_until

SLEEP = shutil.which("sleep") or "/bin/sleep"


def daemon(tmp_path: Path, *args: str, name: str = "sleeper") -> Daemon:
    return Daemon(name, (SLEEP, *args), tmp_path / "run", tmp_path / "logs")


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not ours: whatever a forged record says, it must survive."""
    other = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
    yield other
    other.kill()
    other.wait()


def test_start_is_idempotent_and_stop_leaves_nothing(tmp_path: Path) -> None:
    sleeper = daemon(tmp_path, "300")
    pid = sleeper.start()
    try:
        assert sleeper.start() == pid
        assert sleeper.running()
        record = sleeper.tracked.record()
        assert record is not None and record.pid == pid
        assert record.exes == (str(Path(SLEEP).resolve()),)
    finally:
        assert sleeper.stop(grace=5)
    assert not sleeper.running() and not sleeper.tracked.record_file.exists()
    assert sleeper.stop() is False


def forge(tmp_path: Path, name: str, pid: int, **changes: object) -> Tracked:
    """A record as `up` would have written it for `pid`, then altered by `changes`."""
    real = daemon(tmp_path, "300", name=name)
    started = real.start()
    try:
        record = real.tracked.record()
        assert record is not None
    finally:
        real.stop(grace=5)
    forged = dataclasses.replace(record, pid=pid, **changes)  # type: ignore[arg-type]
    forged.save(real.tracked.record_file)
    assert started != pid
    return real.tracked


def test_a_pid_reused_by_another_process_is_never_signalled(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    # The record of a sleep that has exited, whose pid the kernel handed to `cat`.
    tracked = forge(tmp_path, "reused", bystander.pid)
    assert tracked.state() is State.NOT_OURS
    report = processes.stop_all(tracked.run_dir)
    assert report.stopped == []
    assert report.notes == [f"reused: pid {bystander.pid} is now another process; left alone"]
    assert bystander.poll() is None
    assert not tracked.record_file.exists()  # the stale record is dropped


def test_the_same_start_time_with_another_binary_is_not_ours(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    ticks = processes._stat(bystander.pid)
    assert ticks is not None
    tracked = forge(tmp_path, "other-exe", bystander.pid, start_ticks=ticks.start_ticks)
    assert tracked.state() is State.NOT_OURS
    assert tracked.stop(grace=1) is False
    assert bystander.poll() is None


def test_a_record_from_an_earlier_boot_is_not_ours(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    ticks = processes._stat(bystander.pid)
    assert ticks is not None
    cat = str(Path(shutil.which("cat") or "/bin/cat").resolve())
    tracked = forge(tmp_path, "old-boot", bystander.pid, start_ticks=ticks.start_ticks, exes=(cat,))
    assert tracked.state() is State.RUNNING  # every field matches: this would be ours...
    record = tracked.record()
    assert record is not None
    dataclasses.replace(record, boot_id="0" * 32).save(tracked.record_file)
    assert tracked.state() is State.EXITED  # ...but not after a reboot
    assert tracked.stop(grace=1) is False
    assert bystander.poll() is None


def test_stop_needs_no_environment_and_no_binary_left(tmp_path: Path) -> None:
    """Started through a PATH entry that is gone afterwards; stopped by a process with an
    empty environment, from the record alone."""
    links = tmp_path / "links"
    links.mkdir()
    (links / "stratus-test-sleep").symlink_to(SLEEP)
    sleeper = Daemon("linked", ("stratus-test-sleep", "300"), tmp_path / "run", tmp_path / "logs")
    pid = sleeper.start(env={"PATH": str(links)})
    shutil.rmtree(links)
    assert sleeper.pid() == pid
    stop = (
        "import sys; from pathlib import Path; from stratus_devcloud import processes; "
        "print(processes.stop_all(Path(sys.argv[1])).stopped)"
    )
    result = subprocess.run(
        [sys.executable, "-c", stop, str(sleeper.run_dir)],
        env={},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['linked']"
    processes.reap_children()
    assert sleeper.tracked.state() is State.NO_RECORD
    assert not Path(f"/proc/{pid}").exists()


def test_a_wrapper_that_execs_into_the_daemon_stays_ours(tmp_path: Path) -> None:
    shell = shutil.which("sh") or "/bin/sh"
    wrapped = Daemon(
        "wrapped",
        (shell, "-c", f"exec {SLEEP} 300"),
        tmp_path / "run",
        tmp_path / "logs",
        becomes=(SLEEP,),
    )
    wrapped.start()
    try:
        sleep = str(Path(SLEEP).resolve())
        wait_until("the exec", lambda: processes._exe(wrapped.pid() or 0) == sleep, timeout=10)
        assert wrapped.tracked.state() is State.RUNNING
    finally:
        assert wrapped.stop(grace=5)


def test_stop_all_goes_in_reverse_start_order(tmp_path: Path) -> None:
    first, second = daemon(tmp_path, "300", name="first"), daemon(tmp_path, "300", name="second")
    first.start()
    second.start()
    assert [r.name for r in processes.recorded(first.run_dir)] == ["first", "second"]
    assert processes.stop_all(first.run_dir).stopped == ["second", "first"]


def test_output_goes_to_the_log(tmp_path: Path) -> None:
    echo = Daemon("echo", (shutil.which("echo") or "echo", "hello"), tmp_path / "r", tmp_path / "l")
    echo.start()
    wait_until("the log line", lambda: "hello" in echo.log_tail(), timeout=5)
    assert echo.log_tail().splitlines()[-1] == "hello"
    assert echo.tracked.log_tail().splitlines()[-1] == "hello"


def test_node_services_of_ours_stay_while_another_cloud_uses_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OVS and libvirtd are machine-wide: the cloud that started them stops them only once
    no other bridge or guest is on them (stand-ins: sleeps under their names)."""
    from stratus_devcloud import nodeservices  # noqa: PLC0415

    node = nodeservices.NodeServices(tmp_path)
    for name in ("ovsdb-server", "ovs-vswitchd", "virtlogd", "libvirtd"):
        daemon(tmp_path, "300", name=name).start()
    answers = {"list-br": "stratus-0ther00\n", "list": "stratus-guest-of-theirs\n"}

    def fake_run(*argv: str) -> subprocess.CompletedProcess[str]:
        verb = next(a for a in argv if a in answers)
        return subprocess.CompletedProcess(list(argv), 0, answers[verb], "")

    monkeypatch.setattr(nodeservices, "_run", fake_run)
    try:
        kept = node.stop()
        assert kept.stopped == []
        assert [note.split(":")[0] for note in kept.notes] == [
            "left libvirtd running",
            "left Open vSwitch running",
        ]
        assert len(processes.recorded(node.run_dir)) == 4
        answers.update({"list-br": "", "list": ""})
        assert node.stop().stopped == ["libvirtd", "virtlogd", "ovs-vswitchd", "ovsdb-server"]
    finally:
        processes.stop_all(node.run_dir)
