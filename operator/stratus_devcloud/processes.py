"""Background daemons that outlive the command that started them, and the record that proves
which processes are ours.

Starting a daemon writes RUN_DIR/NAME.json: its pid, the boot it started in, its start time
(clock ticks since boot, /proc/PID/stat field 22) and the executables it may be running
(resolved paths: argv[0], then whatever a wrapper execs into). The pid names our process only
while all of these still match: a recycled pid has another start time, a process of an
earlier boot another boot id. Stopping and asking need nothing but that record (no PATH, no
binary lookups, no environment) and never signal a process the record does not prove ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

STOP_GRACE_SECONDS = 15.0
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


class State(Enum):
    RUNNING = "running"
    EXITED = "exited"
    # The recorded pid belongs to a process that is not the one we started.
    NOT_OURS = "not ours"
    NO_RECORD = "no record"


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    boot_id: str
    # None when the process had already exited by the time it was recorded.
    start_ticks: int | None
    # Resolved executables the process may run: argv[0], then what it execs into.
    exes: tuple[str, ...]
    argv: tuple[str, ...]
    log_file: str
    # Wall-clock nanoseconds at start: orders the records (stop in reverse).
    started_ns: int

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        try:
            raw = json.loads(path.read_text())
            return cls(**{**raw, "exes": tuple(raw["exes"]), "argv": tuple(raw["argv"])})
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        tmp.replace(path)

    def state(self) -> State:
        """Whether the recorded pid is still the process we started."""
        if self.start_ticks is None or _boot_id() != self.boot_id:
            return State.EXITED
        stat = _stat(self.pid)
        if stat is None or stat.zombie:
            return State.EXITED
        if stat.start_ticks != self.start_ticks:
            return State.NOT_OURS
        exe = _exe(self.pid)
        # A process of ours that has exited but is not reaped yet has no exe link.
        if exe is None or exe not in self.exes:
            return State.NOT_OURS
        return State.RUNNING


@dataclass(frozen=True)
class Tracked:
    """A started process, known only by its record: enough to ask about it and stop it."""

    name: str
    run_dir: Path

    @property
    def record_file(self) -> Path:
        return self.run_dir / f"{self.name}.json"

    def record(self) -> ProcessRecord | None:
        return ProcessRecord.load(self.record_file)

    def state(self) -> State:
        record = self.record()
        return State.NO_RECORD if record is None else record.state()

    def pid(self) -> int | None:
        """The pid while our process runs, else None; a record that no longer describes a
        running process of ours is removed (the process it named is gone either way)."""
        record = self.record()
        if record is None:
            return None
        if record.state() is State.RUNNING:
            return record.pid
        self.record_file.unlink(missing_ok=True)
        return None

    def running(self) -> bool:
        return self.pid() is not None

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> bool:
        """SIGTERM, then SIGKILL after `grace` seconds, each only while the record still
        proves the pid ours. True if something was stopped."""
        record = self.record()
        if record is None or record.state() is not State.RUNNING:
            self.record_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and record.state() is State.RUNNING:
            time.sleep(0.05)
        if record.state() is State.RUNNING:
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
            while record.state() is State.RUNNING:
                time.sleep(0.05)
        self.record_file.unlink(missing_ok=True)
        return True

    @property
    def log_file(self) -> Path | None:
        record = self.record()
        return Path(record.log_file) if record else None

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self.log_file, lines)


@dataclass(frozen=True)
class Daemon:
    """How to start one background process; once started, its record (see `Tracked`)."""

    name: str
    argv: tuple[str, ...]
    run_dir: Path
    log_dir: Path
    # What argv[0] execs into, in order, when it is a wrapper (unshare → sh → libvirtd).
    becomes: tuple[str, ...] = ()

    @property
    def tracked(self) -> Tracked:
        return Tracked(self.name, self.run_dir)

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        return self.tracked.pid()

    def running(self) -> bool:
        return self.tracked.running()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> bool:
        return self.tracked.stop(grace)

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self.log_file, lines)

    def start(self, env: dict[str, str] | None = None) -> int:
        """Start unless already running; record it; return the pid."""
        existing = self.pid()
        if existing is not None:
            return existing
        path = (env or os.environ).get("PATH")
        exes = tuple(_resolve(exe, path) for exe in (self.argv[0], *self.becomes))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting\n".encode())
            log.flush()
            # Popen returns once argv[0] is exec'd, so the start time read below is the
            # daemon's own, never that of the forked copy of this interpreter.
            process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survive the CLI that started it, and its Ctrl-C
                env=env,
                close_fds=True,
            )
        # Until this process reaps it, the child's pid cannot be reused: what /proc says
        # now is the daemon's. A script's interpreter shows up as its exe: keep that too.
        stat, observed = _stat(process.pid), _exe(process.pid)
        if observed is not None and observed not in exes:
            exes += (observed,)
        ProcessRecord(
            name=self.name,
            pid=process.pid,
            boot_id=_boot_id(),
            start_ticks=stat.start_ticks if stat else None,
            exes=exes,
            argv=self.argv,
            log_file=str(self.log_file),
            started_ns=time.time_ns(),
        ).save(self.tracked.record_file)
        return process.pid


@dataclass
class StopReport:
    """What a `down` stopped, and what it found but left alone, with why."""

    stopped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, other: StopReport) -> None:
        self.stopped += other.stopped
        self.notes += other.notes


def stop_all(run_dir: Path, names: tuple[str, ...] | None = None) -> StopReport:
    """Stop the recorded processes named (default: every record), in reverse start order.
    A record whose pid now belongs to another process is dropped; that process is left."""
    report = StopReport()
    for record in reversed(recorded(run_dir)):
        if names is not None and record.name not in names:
            continue
        if record.state() is State.NOT_OURS:
            report.notes.append(
                f"{record.name}: pid {record.pid} is now another process; left alone"
            )
        if Tracked(record.name, run_dir).stop():
            report.stopped.append(record.name)
    return report


def recorded(run_dir: Path) -> list[ProcessRecord]:
    """Every process record in `run_dir`, in start order."""
    records = (ProcessRecord.load(path) for path in run_dir.glob("*.json"))
    return sorted((r for r in records if r is not None), key=lambda r: r.started_ns)


@dataclass(frozen=True)
class _Stat:
    start_ticks: int
    zombie: bool


def _stat(pid: int) -> _Stat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; fields after it
    # start at field 3 (state), so field 22 (starttime) is index 19 there.
    fields = raw.rsplit(")", 1)[1].split()
    return _Stat(start_ticks=int(fields[19]), zombie=fields[0] in ("Z", "X"))


def _exe(pid: int) -> str | None:
    try:
        target = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    return target.removesuffix(" (deleted)")


def _boot_id() -> str:
    return BOOT_ID_FILE.read_text().strip()


def _resolve(exe: str, path: str | None) -> str:
    found = exe if "/" in exe else shutil.which(exe, path=path)
    return os.path.realpath(found or exe)


def _tail(log_file: Path | None, lines: int) -> str:
    if log_file is None:
        return "(no log)"
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def reap_children() -> None:
    """Collect exited children so they do not linger as zombies in a long-lived caller."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
