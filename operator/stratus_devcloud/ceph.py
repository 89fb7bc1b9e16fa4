"""A real single-node Ceph cluster for the local cloud, with cephx required everywhere.

One monitor on 127.0.0.1 at a port picked at bootstrap (msgr2 only), one BlueStore OSD on a
sparse file, the pool `stratus` (size 1, `rbd pool init`) and the user `client.stratus`, whose
caps allow RBD on that pool and nothing else. Everything lives in STATE/ceph: the
configuration, the keyrings (mode 0600), the monitor's store, the OSD and its block file.
The daemons are recorded in STATE/run like every other process of the local cloud (see
processes.py), so `down` stops exactly what this state directory started, and the data stays
for the next `up`. Two clusters of two state directories share nothing: ports, sockets and
files are all their own.

No manager daemon (ceph-mgr). RBD needs only the monitor and the OSD (images are created,
resized, written, read and removed without one), while a manager is one more daemon to start
and one more package (ceph-mgr, with its modules and Python libraries: CherryPy, Pecan,
Werkzeug, bcrypt, ...). Without it `ceph df` and `ceph -s` report no usage or placement-group
statistics and the PG autoscaler does not run. The monitor's grace for a new cluster without
a manager is set beyond any dev cloud's life, or `ceph health` would say HEALTH_WARN "no
active mgr" (MGR_DOWN) from two minutes after the cluster was made.

Made in ~5 s on 2 cores (mkfs of the OSD ~2 s, its first boot ~1.5 s); started again from
its data in ~2 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stratus_devcloud import controlplane, nodeservices, processes
from stratus_devcloud.processes import Daemon

POOL = "stratus"
USER = "stratus"
USER_CAPS = ("mon", "profile rbd", "osd", f"profile rbd pool={POOL}")
DEFAULT_OSD_BYTES = 4 * 1024**3
# In start order: `down` stops them in reverse (the OSD tells the monitor it is going; with
# the monitor already gone it waits ~5 s for an answer).
DAEMON_NAMES = ("ceph-mon", "ceph-osd")
MON_ID = "a"
OSD_ID = 0
PG_COUNT = 8  # plenty for one OSD; a power of two, or the monitor warns
STEP_TIMEOUT_SECONDS = 60.0  # one command; mkfs of the OSD takes ~2 s here
READY_TIMEOUT_SECONDS = 60.0  # a daemon serving after its start; ~0.3 s (mon), ~2 s (OSD)
CONNECT_TIMEOUT_SECONDS = 10  # `ceph` reaching the monitor; it retries until then
# The tools this module runs, and the Debian package each comes from.
TOOLS = {
    "ceph": "ceph-common",
    "ceph-authtool": "ceph-common",
    "rbd": "ceph-common",
    "monmaptool": "ceph-base",
    "ceph-mon": "ceph-mon",
    "ceph-osd": "ceph-osd",
}


class CephError(RuntimeError):
    """A step of making or starting the local Ceph cluster failed."""


@dataclass(frozen=True)
class CephCluster:
    """How a client reaches the cluster as `client.USER`.

    `key` is that user's cephx secret: kept out of repr, never to be logged or printed; show
    `keyring_path` (where it is kept, mode 0600) instead.
    """

    fsid: str
    monitors: str  # "127.0.0.1:PORT", as librados' mon_host and QEMU's rbd driver take it
    pool: str
    user: str  # without "client.", as rados_id and QEMU's `id=` take it
    key: str = field(repr=False)
    conf_path: Path
    keyring_path: Path
    admin_keyring_path: Path


def missing_tools() -> list[str]:
    """The Ceph tools not installed, each with the package that has it."""
    return [
        f"{binary} ({package})"
        for binary, package in TOOLS.items()
        if "/" not in nodeservices.tool(binary)
    ]


def render_conf(ceph_dir: Path, fsid: str, mon_port: int) -> str:
    """The configuration of every daemon and client of the cluster in `ceph_dir`."""
    d = ceph_dir
    sections = {
        "global": {
            "fsid": fsid,
            # msgr2 only. A client given the bare "127.0.0.1:PORT" of CephCluster.monitors
            # tries msgr2 first on a port other than 6789.
            "mon_host": f"[v2:127.0.0.1:{mon_port}]",
            "public_addr": "127.0.0.1",
            "cluster_addr": "127.0.0.1",
            "auth_cluster_required": "cephx",
            "auth_service_required": "cephx",
            "auth_client_required": "cephx",
            "auth_allow_insecure_global_id_reclaim": "false",
            # Nothing under /var/run/ceph, /var/lib/ceph or /var/log/ceph, which other
            # clusters on this machine would share: daemons log to stderr (their -d), which
            # processes.Daemon keeps in STATE/logs.
            "run_dir": f"{d / 'run'}",
            "crash_dir": f"{d / 'crash'}",
            "log_to_file": "false",
            "mon_cluster_log_to_file": "false",
            # One OSD: one copy of everything, and no warnings saying so.
            "osd_pool_default_size": "1",
            "osd_pool_default_min_size": "1",
            "mon_allow_pool_size_one": "true",
            "mon_warn_on_pool_no_redundancy": "false",
            "osd_crush_chooseleaf_type": "0",
            # The monitor's store shares the host's disk: warn when it is nearly full, not
            # when it is 70 % full (the default), which a developer's disk often is.
            "mon_data_avail_warn": "10",
            # No manager, on purpose (see the module docstring): ten years of grace.
            "mon_mgr_mkfs_grace": str(10 * 365 * 24 * 3600),
            # One monitor has no one to batch map updates with: commit each at once, not
            # after a second (the default), which several startup steps wait for in turn.
            "paxos_propose_interval": "0.1",
        },
        "mon": {
            "mon_data": f"{d / 'mon'}/$cluster-$id",
            "keyring": f"{d / 'mon.keyring'}",
            "admin_socket": f"{d / 'run'}/$cluster-$name.asok",
        },
        "osd": {
            "osd_objectstore": "bluestore",
            "osd_data": f"{d / 'osd'}/$cluster-$id",
            "keyring": "$osd_data/keyring",
            # Beside the data directory, never in it: mkfs links DATA/block to this path,
            # and a link to itself fails with ELOOP.
            "bluestore_block_path": f"{d / 'osd'}/$cluster-$id.block",
            "osd_memory_target": str(1024**3),  # the default, 4 GiB, is for real disks
            # A file counts as a rotational disk, whose default is 5 shards, and each shard
            # opens the device once at start (~0.3 s each here).
            "osd_op_num_shards": "2",
            "admin_socket": f"{d / 'run'}/$cluster-$name.asok",
        },
        "client.admin": {"keyring": f"{d / 'admin.keyring'}"},
        f"client.{USER}": {"keyring": f"{d / f'client.{USER}.keyring'}"},
    }
    lines = []
    for section, options in sections.items():
        lines += [f"[{section}]", *(f"{key} = {value}" for key, value in options.items()), ""]
    return "\n".join(lines)


class LocalCeph:
    """The cluster of one state directory: `up` makes it once and starts it, `down` stops
    what this state directory started."""

    def __init__(self, state_dir: Path, osd_bytes: int = DEFAULT_OSD_BYTES) -> None:
        self.state_dir = state_dir.resolve()
        self.dir = self.state_dir / "ceph"
        self.run_dir, self.log_dir = self.state_dir / "run", self.state_dir / "logs"
        self.osd_bytes = osd_bytes
        # Started by this object: their log tails go into its errors.
        self._started: list[Daemon] = []

    # -- layout ---------------------------------------------------------------------------
    @property
    def conf_path(self) -> Path:
        return self.dir / "ceph.conf"

    @property
    def admin_keyring(self) -> Path:
        return self.dir / "admin.keyring"

    @property
    def user_keyring(self) -> Path:
        return self.dir / f"client.{USER}.keyring"

    @property
    def made_file(self) -> Path:
        """Written last when the cluster is made: no file, no (complete) cluster."""
        return self.dir / "cluster.json"

    def daemons(self) -> tuple[Daemon, Daemon]:
        """The monitor and the OSD, in start order."""
        conf = str(self.conf_path)
        mon = (_require("ceph-mon"), "-d", "-c", conf, "-i", MON_ID)
        osd = (_require("ceph-osd"), "-d", "-c", conf, "-i", str(OSD_ID))
        return (
            Daemon("ceph-mon", mon, self.run_dir, self.log_dir),
            Daemon("ceph-osd", osd, self.run_dir, self.log_dir),
        )

    # -- lifecycle ------------------------------------------------------------------------
    def up(self) -> CephCluster:
        """Make the cluster unless made, start what is not running, wait until the OSD is up
        and in; return how to reach it."""
        missing = missing_tools()
        if missing:
            raise CephError(f"not installed: {', '.join(missing)}; run hack/install-deps")
        if self.made_file.exists():
            self._start()
        else:
            self._make()
        return self.cluster()

    def down(self) -> processes.StopReport:
        """Stop the daemons this state directory started and wait until they have exited."""
        return processes.stop_all(self.run_dir, DAEMON_NAMES)

    def running(self) -> list[str]:
        return [name for name in DAEMON_NAMES if processes.Tracked(name, self.run_dir).running()]

    def cluster(self) -> CephCluster:
        try:
            made = json.loads(self.made_file.read_text())
            key = _key_in(self.user_keyring.read_text())
        except (OSError, ValueError) as exc:
            raise CephError(f"no complete Ceph cluster in {self.dir}: {exc}") from exc
        return CephCluster(
            fsid=made["fsid"],
            monitors=f"127.0.0.1:{made['mon_port']}",
            pool=POOL,
            user=USER,
            key=key,
            conf_path=self.conf_path,
            keyring_path=self.user_keyring,
            admin_keyring_path=self.admin_keyring,
        )

    def _start(self) -> None:
        mon, osd = self.daemons()
        started = [daemon for daemon in (mon, osd) if not daemon.running()]
        try:
            self._start_daemon(mon)
            self._wait_for_monitor(mon)
            self._start_daemon(osd)
            self._wait_for_osd(osd)
        except CephError:
            for daemon in reversed(started):
                daemon.stop()
            raise

    def _make(self) -> None:
        """A new cluster, from nothing: whatever an earlier, unfinished attempt left in
        STATE/ceph goes first."""
        self.down()
        shutil.rmtree(self.dir, ignore_errors=True)
        for directory in (self.dir, self.dir / "mon", self.dir / "osd", self.dir / "run"):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fsid, mon_port = str(uuid.uuid4()), controlplane.free_port()
        self.conf_path.write_text(render_conf(self.dir, fsid, mon_port))
        mon, osd = self.daemons()
        try:
            self._make_monitor(fsid, mon_port)
            self._start_daemon(mon)
            self._wait_for_monitor(mon)
            self._make_osd()
            self._start_daemon(osd)
            # The pool and the user need only the monitor: made while the OSD boots.
            self._make_pool_and_user()
            self._wait_for_osd(osd)
            self._step("rbd pool init", "rbd", *self._as_admin(), "pool", "init", POOL)
        except CephError:
            self.down()
            raise
        self.made_file.write_text(json.dumps({"fsid": fsid, "mon_port": mon_port}) + "\n")

    def _make_monitor(self, fsid: str, mon_port: int) -> None:
        mon_keyring, monmap = self.dir / "mon.keyring", self.dir / "monmap"
        self._step(
            "mon. key", "ceph-authtool", "--create-keyring", str(mon_keyring),
            "--gen-key", "-n", "mon.", "--cap", "mon", "allow *",
        )  # fmt: skip
        self._step(
            "client.admin key", "ceph-authtool", "--create-keyring", str(self.admin_keyring),
            "--gen-key", "-n", "client.admin",
            "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *",
        )  # fmt: skip
        self._step(
            "monitor keyring", "ceph-authtool", str(mon_keyring),
            "--import-keyring", str(self.admin_keyring),
        )  # fmt: skip
        self._step(
            "monmap", "monmaptool", "--create", "--fsid", fsid,
            "--addv", MON_ID, f"[v2:127.0.0.1:{mon_port}]", str(monmap),
        )  # fmt: skip
        self._step(
            "monitor mkfs", "ceph-mon", "--mkfs", "-c", str(self.conf_path), "-i", MON_ID,
            "--monmap", str(monmap),
        )  # fmt: skip
        monmap.unlink()

    def _make_osd(self) -> None:
        # The OSD's secret goes to the monitor on stdin and into its keyring file: never
        # on a command line, where every user of the machine could read it.
        secret = self._step("OSD key", "ceph-authtool", "--gen-print-key").strip()
        osd_uuid = str(uuid.uuid4())
        self._ceph_step(
            "ceph osd new", "osd", "new", osd_uuid, str(OSD_ID), "-i", "-",
            stdin=json.dumps({"cephx_secret": secret}),
        )  # fmt: skip
        data = self.dir / "osd" / f"ceph-{OSD_ID}"
        data.mkdir(mode=0o700)
        _write_private(data / "keyring", f"[osd.{OSD_ID}]\n\tkey = {secret}\n")
        block = os.open(data.with_name(data.name + ".block"), os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.ftruncate(block, self.osd_bytes)  # sparse: takes what is written
        finally:
            os.close(block)
        self._step(
            "OSD mkfs", "ceph-osd", "--mkfs", "-c", str(self.conf_path), "-i", str(OSD_ID),
            "--osd-uuid", osd_uuid,
        )  # fmt: skip

    def _make_pool_and_user(self) -> None:
        # Size and min_size 1 come from the configuration's pool defaults.
        pg = str(PG_COUNT)
        self._ceph_step("pool create", "osd", "pool", "create", POOL, pg, pg)
        self._ceph_step(
            f"client.{USER} key", "auth", "get-or-create", f"client.{USER}", *USER_CAPS,
            "-o", str(self.user_keyring),
        )  # fmt: skip

    # -- waiting --------------------------------------------------------------------------
    def _wait_for_monitor(self, mon: Daemon) -> None:
        self._wait("the monitor answering", lambda: self._ceph_json("health") is not None, mon)

    def _wait_for_osd(self, osd: Daemon) -> None:
        """Until the monitor has osd.0 up and in at this process's address. An OSD that was
        killed, not stopped, stays up in the monitor's map for minutes: its address (whose
        nonce is the pid) tells the old one from ours."""

        def ours_up_and_in() -> bool:
            dump, pid = self._ceph_json("osd", "dump"), osd.pid()
            entries = dump.get("osds", []) if dump else []
            for entry in entries if isinstance(entries, list) else []:
                if entry.get("osd") == OSD_ID and entry.get("up") and entry.get("in"):
                    addrs = entry.get("public_addrs", {}).get("addrvec", [])
                    return any(addr.get("nonce") == pid for addr in addrs)
            return False

        self._wait(f"osd.{OSD_ID} up and in", ours_up_and_in, osd)

    def _wait(self, what: str, ready: Callable[[], bool], daemon: Daemon) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if ready():
                return
            if not daemon.running():
                raise CephError(f"waiting for {what}: {daemon.name} exited{self._log_tails()}")
            time.sleep(0.2)
        raise CephError(f"no {what} after {READY_TIMEOUT_SECONDS:.0f} s{self._log_tails()}")

    # -- commands -------------------------------------------------------------------------
    def _as_admin(self) -> tuple[str, ...]:
        """`ceph` and `rbd` arguments: this cluster, as client.admin."""
        conf, keyring = str(self.conf_path), str(self.admin_keyring)
        return ("-c", conf, "-n", "client.admin", "-k", keyring)

    def _ceph_step(self, step: str, *args: str, stdin: str | None = None) -> str:
        connect = ("--connect-timeout", str(CONNECT_TIMEOUT_SECONDS))
        return self._step(step, "ceph", *self._as_admin(), *connect, *args, stdin=stdin)

    def _ceph_json(self, *args: str) -> dict[str, Any] | None:
        """`ceph ARGS -f json` as admin, parsed; None if it fails (for polling)."""
        connect = ("--connect-timeout", str(CONNECT_TIMEOUT_SECONDS))
        argv = [nodeservices.tool("ceph"), *self._as_admin(), *connect, *args, "-f", "json"]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=STEP_TIMEOUT_SECONDS, check=False
            )
            parsed = json.loads(done.stdout) if done.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, ValueError):
            return None
        return parsed if isinstance(parsed, dict) else None

    def _step(self, step: str, *argv: str, stdin: str | None = None) -> str:
        """Run one step; its stdout, or CephError naming the step with its stderr and the
        daemons' log tails. Files it makes are private to their owner (umask 077)."""
        command = [nodeservices.tool(argv[0]), *argv[1:]]
        try:
            done = subprocess.run(
                command,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=STEP_TIMEOUT_SECONDS,
                check=False,
                umask=0o077,
            )
        except subprocess.TimeoutExpired:
            raise CephError(
                f"{step}: {argv[0]} did not finish within {STEP_TIMEOUT_SECONDS:.0f} s"
                f"{self._log_tails()}"
            ) from None
        except OSError as exc:
            raise CephError(f"{step}: cannot run {argv[0]}: {exc}") from None
        if done.returncode != 0:
            # stderr only: stdout may hold a secret (ceph-authtool --gen-print-key).
            stderr = "\n".join(done.stderr.strip().splitlines()[-10:])
            raise CephError(
                f"{step}: {argv[0]} exited {done.returncode}:\n{stderr}{self._log_tails()}"
            )
        return done.stdout

    def _start_daemon(self, daemon: Daemon) -> None:
        daemon.start()
        self._started.append(daemon)

    def _log_tails(self) -> str:
        tails = ""
        for daemon in self._started:
            # Ceph's -d writes a blank line after each entry.
            lines = [line for line in daemon.log_tail(20).splitlines() if line.strip()]
            tails += f"\nlast lines of {daemon.log_file}:\n" + "\n".join(lines)
        return tails


def _require(binary: str) -> str:
    path = nodeservices.tool(binary)
    if "/" not in path:
        raise CephError(f"{binary} not found: apt-get install {TOOLS[binary]}")
    return path


def _key_in(keyring: str) -> str:
    found = re.search(r"^\s*key\s*=\s*(\S+)\s*$", keyring, re.MULTILINE)
    if found is None:
        raise ValueError("no key in the keyring")
    return found.group(1)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
