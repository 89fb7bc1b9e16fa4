"""The node's system services for the all-in-one cloud: Open vSwitch and libvirtd.

Both are machine-wide (libvirt plugs NICs through OVS's default socket, and qemu:///system
is one daemon), so each is started only when not already running, and stopped only by
whoever started it, as the process records under STATE/run prove (see processes.py). The
all-in-one's `down` also waits until nothing else uses them (`stop`): another local cloud's
bridge or guests may sit on the OVS or libvirtd this one started.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path

from stratus_devcloud import processes
from stratus_devcloud.processes import Daemon

OVS_RUN_DIR = Path("/var/run/openvswitch")
OVS_DB_SOCK = OVS_RUN_DIR / "db.sock"
OVS_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
LIBVIRT_URI = "qemu:///system"
START_TIMEOUT_SECONDS = 30.0
# Where Debian puts system tools, for callers whose PATH lacks them (`down` from cron, sudo).
SYSTEM_BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
OVS_NAMES = ("ovsdb-server", "ovs-vswitchd")
LIBVIRT_NAMES = ("virtlogd", "libvirtd")


class NodeServiceError(RuntimeError):
    """A node service could not be found or started."""


def tool(binary: str) -> str:
    """`binary` on PATH, else in the system directories; else the bare name (which fails
    when run, as a missing tool should)."""
    found = shutil.which(binary) or shutil.which(binary, path=":".join(SYSTEM_BIN_DIRS))
    return found or binary


def _run(*argv: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            [tool(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _ok(*argv: str) -> bool:
    result = _run(*argv)
    return result is not None and result.returncode == 0


def wait_for_daemons(what: str, probe: list[str], daemons: list[Daemon]) -> None:
    """Until `probe` succeeds; NodeServiceError when a daemon exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if _ok(*probe):
            return
        for daemon in daemons:
            if not daemon.running():
                raise NodeServiceError(
                    f"{daemon.name} exited; last lines of {daemon.log_file}:\n{daemon.log_tail()}"
                )
        time.sleep(0.1)
    raise NodeServiceError(f"{what} did not come up within {START_TIMEOUT_SECONDS:.0f} s")


def kvm_usable() -> bool:
    """/dev/kvm alone is not enough: without vmx/svm in the CPU flags the kernel offers only a
    paravirtual KVM whose guests hang after the BIOS (and libvirtd re-probes it for ~45 s
    on every domain start)."""
    if not Path("/dev/kvm").exists():
        return False
    flags = Path("/proc/cpuinfo").read_text()
    return " vmx" in flags or " svm" in flags


def _require(binary: str, package: str) -> str:
    path = tool(binary)
    if "/" not in path:
        raise NodeServiceError(f"{binary} not found: apt-get install {package}")
    return path


class NodeServices:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.run_dir, self.log_dir = state_dir / "run", state_dir / "logs"
        self._ovs_db = state_dir / "ovs" / "conf.db"

    # Built when starting only: asking and stopping need no binaries, just the records.
    def _ovs_daemons(self) -> tuple[Daemon, Daemon]:
        ovs = self.state_dir / "ovs"
        ovsdb = Daemon(
            "ovsdb-server",
            (
                _require("ovsdb-server", "openvswitch-switch"),
                str(self._ovs_db),
                f"--remote=punix:{OVS_DB_SOCK}",
                f"--pidfile={ovs / 'ovsdb-server.pid'}",
                f"--unixctl={ovs / 'ovsdb-server.ctl'}",
            ),
            self.run_dir,
            self.log_dir,
        )
        vswitchd = Daemon(
            "ovs-vswitchd",
            (
                _require("ovs-vswitchd", "openvswitch-switch"),
                f"unix:{OVS_DB_SOCK}",
                f"--pidfile={ovs / 'ovs-vswitchd.pid'}",
                f"--unixctl={ovs / 'ovs-vswitchd.ctl'}",
            ),
            self.run_dir,
            self.log_dir,
        )
        return ovsdb, vswitchd

    def _libvirt_daemons(self) -> tuple[Daemon, Daemon]:
        libvirtd = _require("libvirtd", "libvirt-daemon-system")
        virtlogd = Daemon(
            "virtlogd", (_require("virtlogd", "libvirt-daemon-system"),), self.run_dir, self.log_dir
        )
        if not (Path("/dev/kvm").exists() and not kvm_usable()):
            return virtlogd, Daemon("libvirtd", (libvirtd,), self.run_dir, self.log_dir)
        # Hide the unusable /dev/kvm from libvirtd only, in a private mount namespace,
        # behind a character device (libvirt's per-domain /dev copies only device nodes)
        # that the QEMU user cannot open. /dev/null would not do: libvirt 9.0 counts a
        # /dev/kvm it can open as usable KVM, finds its cached capabilities without KVM
        # stale and re-probes QEMU for ~20 s on every domain start.
        mask = shlex.quote(str(self.run_dir / "kvm-masked"))
        shell = _require("sh", "dash")
        argv = (
            _require("unshare", "util-linux"),
            "-m",
            "--propagation",
            "private",
            shell,
            "-c",
            f"{{ [ -c {mask} ] || mknod -m 000 {mask} c 1 3; }} && "
            f"mount --bind {mask} /dev/kvm && exec {libvirtd}",
        )
        return virtlogd, Daemon(
            "libvirtd", argv, self.run_dir, self.log_dir, becomes=(shell, libvirtd)
        )

    @property
    def vswitchd_target(self) -> str | None:
        """ovs-appctl's -t for the running ovs-vswitchd of the host's database: its control
        socket when started with one of its own (by these services, or by another state
        directory's, which up() then reuses); None for the default."""
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = cmdline.read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if Path(argv[0]).name != "ovs-vswitchd" or f"unix:{OVS_DB_SOCK}" not in argv:
                continue
            return next((a.split("=", 1)[1] for a in argv if a.startswith("--unixctl=")), None)
        return None

    def ovs_running(self) -> bool:
        return _ok("ovs-vsctl", "--timeout=2", "show")

    def libvirt_running(self) -> bool:
        return _ok("virsh", "-c", LIBVIRT_URI, "version")

    def up(self, *, libvirt: bool = True) -> list[str]:
        """Start what is not running (Open vSwitch, and libvirt unless told not to: an
        overlay test plugs no guest through it); return the names of what this call
        started."""
        started = []
        if not self.ovs_running():
            ovsdb, vswitchd = self._ovs_daemons()
            OVS_RUN_DIR.mkdir(parents=True, exist_ok=True)
            if not self._ovs_db.exists():
                self._ovs_db.parent.mkdir(parents=True, exist_ok=True)
                subprocess.run(
                    [tool("ovsdb-tool"), "create", str(self._ovs_db), str(OVS_SCHEMA)], check=True
                )
            ovsdb.start()
            wait_for_daemons(
                "ovsdb-server", ["ovs-vsctl", "--timeout=2", "--no-wait", "init"], [ovsdb]
            )
            vswitchd.start()
            wait_for_daemons(
                "ovs-vswitchd", ["ovs-vsctl", "--timeout=2", "show"], [ovsdb, vswitchd]
            )
            started += ["ovsdb-server", "ovs-vswitchd"]
        if libvirt and not self.libvirt_running():
            virtlogd, libvirtd = self._libvirt_daemons()
            if not _ok("pgrep", "-x", "virtlogd"):
                virtlogd.start()
                started.append("virtlogd")
            libvirtd.start()
            wait_for_daemons("libvirtd", ["virsh", "-c", LIBVIRT_URI, "version"], [libvirtd])
            started.append("libvirtd")
        return started

    def down(self) -> list[str]:
        """Stop what this state directory started, in use or not; return the names."""
        return self.stop(spare_in_use=False).stopped

    def stop(self, spare_in_use: bool = True) -> processes.StopReport:
        """Stop what this state directory started; with `spare_in_use`, leave OVS while
        another bridge is on it and libvirtd while guests run on it, and say so."""
        if not spare_in_use:
            return processes.stop_all(self.run_dir, (*OVS_NAMES, *LIBVIRT_NAMES))
        report = processes.StopReport()
        running_domains = _run("virsh", "-c", LIBVIRT_URI, "list", "--name")
        domains = running_domains.stdout.split() if running_domains else []
        if domains and self._started_any(LIBVIRT_NAMES):
            report.notes.append(
                f"left libvirtd running: {len(domains)} other guest(s) run on it "
                f"({', '.join(domains[:3])})"
            )
        else:
            report.add(processes.stop_all(self.run_dir, LIBVIRT_NAMES))
        listed = _run("ovs-vsctl", "--timeout=5", "list-br")
        bridges = listed.stdout.split() if listed and listed.returncode == 0 else []
        if bridges and self._started_any(OVS_NAMES):
            report.notes.append(
                f"left Open vSwitch running: other bridges are on it ({', '.join(bridges)})"
            )
        else:
            report.add(processes.stop_all(self.run_dir, OVS_NAMES))
        return report

    def _started_any(self, names: tuple[str, ...]) -> bool:
        return any(processes.Tracked(name, self.run_dir).running() for name in names)
