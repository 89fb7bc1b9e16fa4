"""The node's system services for the all-in-one cloud: Open vSwitch and libvirtd.

Both are machine-wide (libvirt plugs NICs through OVS's default socket, and qemu:///system
is one daemon), so each is started only when not already running, and stopped only by
whoever started it: the pid files under STATE/run say which.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path

from stratus_devcloud.processes import Daemon

OVS_RUN_DIR = Path("/var/run/openvswitch")
OVS_DB_SOCK = OVS_RUN_DIR / "db.sock"
OVS_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
LIBVIRT_URI = "qemu:///system"
START_TIMEOUT_SECONDS = 30.0


class NodeServiceError(RuntimeError):
    """A node service could not be found or started."""


def _ok(*argv: str) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _wait(what: str, probe: list[str], daemons: list[Daemon]) -> None:
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
    path = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None
    )
    if path is None:
        raise NodeServiceError(f"{binary} not found: apt-get install {package}")
    return path


class NodeServices:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        run, logs = state_dir / "run", state_dir / "logs"
        ovs_db = state_dir / "ovs" / "conf.db"
        self.ovsdb = Daemon(
            "ovsdb-server",
            (
                _require("ovsdb-server", "openvswitch-switch"),
                str(ovs_db),
                f"--remote=punix:{OVS_DB_SOCK}",
                f"--pidfile={state_dir / 'ovs' / 'ovsdb-server.pid'}",
                "--unixctl=" + str(state_dir / "ovs" / "ovsdb-server.ctl"),
            ),
            run,
            logs,
        )
        self.vswitchd = Daemon(
            "ovs-vswitchd",
            (
                _require("ovs-vswitchd", "openvswitch-switch"),
                f"unix:{OVS_DB_SOCK}",
                f"--pidfile={state_dir / 'ovs' / 'ovs-vswitchd.pid'}",
                "--unixctl=" + str(state_dir / "ovs" / "ovs-vswitchd.ctl"),
            ),
            run,
            logs,
        )
        self._ovs_db = ovs_db
        libvirtd = _require("libvirtd", "libvirt-daemon-system")
        if Path("/dev/kvm").exists() and not kvm_usable():
            # Hide the unusable /dev/kvm from libvirtd only, in a private mount namespace,
            # behind a character device (libvirt's per-domain /dev copies only device nodes)
            # that the QEMU user cannot open. /dev/null would not do: libvirt 9.0 counts a
            # /dev/kvm it can open as usable KVM, finds its cached capabilities without KVM
            # stale and re-probes QEMU for ~20 s on every domain start.
            mask = shlex.quote(str(run / "kvm-masked"))
            libvirtd_argv: tuple[str, ...] = (
                _require("unshare", "util-linux"),
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"{{ [ -c {mask} ] || mknod -m 000 {mask} c 1 3; }} && "
                f"mount --bind {mask} /dev/kvm && exec {libvirtd}",
            )
        else:
            libvirtd_argv = (libvirtd,)
        self.virtlogd = Daemon(
            "virtlogd", (_require("virtlogd", "libvirt-daemon-system"),), run, logs
        )
        self.libvirtd = Daemon("libvirtd", libvirtd_argv, run, logs, exe=libvirtd)

    def ovs_running(self) -> bool:
        return _ok("ovs-vsctl", "--timeout=2", "show")

    def libvirt_running(self) -> bool:
        return _ok("virsh", "-c", LIBVIRT_URI, "version")

    def up(self) -> list[str]:
        """Start what is not running; return the names of what this call started."""
        started = []
        if not self.ovs_running():
            OVS_RUN_DIR.mkdir(parents=True, exist_ok=True)
            if not self._ovs_db.exists():
                self._ovs_db.parent.mkdir(parents=True, exist_ok=True)
                subprocess.run(
                    ["ovsdb-tool", "create", str(self._ovs_db), str(OVS_SCHEMA)], check=True
                )
            self.ovsdb.start()
            _wait("ovsdb-server", ["ovs-vsctl", "--timeout=2", "--no-wait", "init"], [self.ovsdb])
            self.vswitchd.start()
            _wait("ovs-vswitchd", ["ovs-vsctl", "--timeout=2", "show"], [self.ovsdb, self.vswitchd])
            started += ["ovsdb-server", "ovs-vswitchd"]
        if not self.libvirt_running():
            if not _ok("pgrep", "-x", "virtlogd"):
                self.virtlogd.start()
                started.append("virtlogd")
            self.libvirtd.start()
            _wait("libvirtd", ["virsh", "-c", LIBVIRT_URI, "version"], [self.libvirtd])
            started.append("libvirtd")
        return started

    def down(self) -> list[str]:
        """Stop what this state directory started."""
        daemons = [self.libvirtd, self.virtlogd, self.vswitchd, self.ovsdb]
        return [daemon.name for daemon in daemons if daemon.stop()]
