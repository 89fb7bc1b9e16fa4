"""The test guest image boots under QEMU (TCG) and configures itself from a NoCloud seed.

Real QEMU, the real Debian cloud kernel, real seed ISOs; what the guest prints on its serial
console ("STRATUS-GUEST: ..." markers) is what is asserted on. The image is built once per
session by hack/build-test-image into its default cache
(${STRATUS_CACHE_DIR:-~/.cache/stratus}/test-image; rebuilt only when its inputs change).
Every guest runs from a qcow2 overlay in the test's tmp_path, with its serial console in a
file there, and is killed when the test ends.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stratus_agent.drivers.seed import nocloud
from stratus_api.guest import CloudInit
from testsupport import build_test_image

MARKER = "STRATUS-GUEST: "
TOOLS = ("qemu-system-x86_64", "qemu-img", "genisoimage")


@pytest.fixture(scope="session")
def guest_image() -> Path:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: run hack/install-deps")
    return build_test_image()


def make_seed(directory: Path, files: dict[str, str]) -> Path:
    """A NoCloud seed ISO (label cidata) holding `files`, as genisoimage writes it."""
    content = directory / "seed"
    content.mkdir()
    for name, text in files.items():
        (content / name).write_text(text)
    iso = directory / "seed.iso"
    subprocess.run(
        ["genisoimage", "-quiet", "-V", "cidata", "-J", "-r", "-o", str(iso), str(content)],
        check=True,
        timeout=60,
    )
    return iso


@dataclass
class Guest:
    name: str
    process: subprocess.Popen[bytes]
    console_log: Path
    qemu_log: Path

    def console(self) -> str:
        if not self.console_log.exists():
            return ""
        return self.console_log.read_bytes().decode(errors="replace").replace("\r", "")

    def markers(self) -> list[str]:
        """The marker lines so far, without the prefix (a console prompt may precede one)."""
        return [
            line[line.index(MARKER) + len(MARKER) :].rstrip()
            for line in self.console().splitlines()
            if MARKER in line
        ]

    def wait_for(self, marker: str, timeout: float = 120) -> list[str]:
        """Poll the console until `marker` shows up; return all markers by then."""
        deadline = time.monotonic() + timeout
        while True:
            markers = self.markers()
            if marker in markers:
                return markers
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name}: QEMU exited ({self.process.returncode}) before {marker!r}\n"
                    f"{self.diagnostics()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: no {marker!r} within {timeout} s\n{self.diagnostics()}"
                )
            time.sleep(0.2)

    def monitor(self, command: str) -> None:
        """Send a command to the QEMU monitor (on QEMU's stdin)."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command}\n".encode())
        self.process.stdin.flush()

    def wait_exit(self, timeout: float) -> int | None:
        """Poll until QEMU exits; its exit code, or None if it is still running."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.process.poll()

    def diagnostics(self) -> str:
        qemu = self.qemu_log.read_text(errors="replace") if self.qemu_log.exists() else ""
        return f"--- console (last 4000 chars):\n{self.console()[-4000:]}\n--- qemu:\n{qemu}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        if self.process.stdin is not None:
            self.process.stdin.close()


@dataclass
class GuestLauncher:
    """Boots guests from the test image; kills every one of them at teardown."""

    image: Path
    directory: Path
    guests: list[Guest] = field(default_factory=list)

    def boot(
        self,
        name: str,
        *,
        nics: list[tuple[str, str]],
        seed: Path | None = None,
        machine: str = "pc",
        cdrom_bus: str = "ide",
    ) -> Guest:
        """Start a guest. nics: (mac, QEMU -netdev options without id), one per NIC.

        cdrom_bus "ide" attaches the seed as the machine's IDE CD-ROM (pc only: this kernel
        has no AHCI driver, which q35's CD-ROM needs); "scsi" puts it on virtio-scsi.
        """
        work = self.directory / name
        work.mkdir()
        overlay = work / "disk.qcow2"
        subprocess.run(
            [
                *("qemu-img", "create", "-q", "-f", "qcow2"),
                *("-F", "qcow2", "-b", str(self.image), str(overlay)),
            ],
            check=True,
            timeout=60,
        )
        console_log = work / "console.log"
        command = [
            "qemu-system-x86_64",
            *("-machine", machine, "-accel", "tcg", "-m", "256", "-smp", "1"),
            *("-nodefaults", "-display", "none", "-monitor", "stdio"),
            *("-serial", f"file:{console_log}"),
            *("-drive", f"file={overlay},if=virtio,format=qcow2"),
        ]
        for index, (mac, netdev) in enumerate(nics):
            command += ["-netdev", f"{netdev},id=n{index}"]
            command += ["-device", f"virtio-net-pci,netdev=n{index},mac={mac}"]
        if seed is not None:
            if cdrom_bus == "ide":
                command += ["-cdrom", str(seed)]
            elif cdrom_bus == "scsi":
                command += [
                    *("-device", "virtio-scsi-pci,id=scsi0"),
                    *("-drive", f"file={seed},if=none,id=seed,media=cdrom,readonly=on"),
                    *("-device", "scsi-cd,drive=seed,bus=scsi0.0"),
                ]
            else:
                raise ValueError(cdrom_bus)
        qemu_log = work / "qemu.log"
        with qemu_log.open("wb") as out:
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT
            )
        guest = Guest(name, process, console_log, qemu_log)
        self.guests.append(guest)
        return guest


@pytest.fixture
def guests(guest_image: Path, tmp_path: Path) -> Iterator[GuestLauncher]:
    launcher = GuestLauncher(guest_image, tmp_path)
    try:
        yield launcher
    finally:
        for guest in launcher.guests:
            guest.kill()


MAC = "52:54:00:12:34:56"

# Exactly the network-config subset Stratus generates (cloud-init network-config v2).
NETWORK_CONFIG = f"""\
version: 2
ethernets:
  nic0:
    match:
      macaddress: "{MAC}"
    set-name: eth0
    addresses:
      - 10.20.0.17/24
    mtu: 1450
    gateway4: 10.20.0.1
    nameservers:
      addresses: [10.20.0.1]
"""


@pytest.mark.parametrize(
    ("machine", "cdrom_bus"),
    [("pc", "ide"), ("q35", "scsi")],
    ids=["pc-ide-cdrom", "q35-virtio-scsi-cdrom"],
)
def test_guest_configures_itself_from_the_seed(
    guests: GuestLauncher, tmp_path: Path, machine: str, cdrom_bus: str
) -> None:
    seed = make_seed(
        tmp_path,
        {
            "meta-data": "instance-id: i-0123abcd\nlocal-hostname: web-1\n",
            "user-data": "#!/bin/sh\necho hello-from-userdata\n",
            "network-config": NETWORK_CONFIG,
        },
    )
    guest = guests.boot(
        "web-1", nics=[(MAC, "user")], seed=seed, machine=machine, cdrom_bus=cdrom_bus
    )

    markers = guest.wait_for("ready")

    assert markers[0] == "booted"
    for expected in (
        "hostname=web-1",
        "instance-id=i-0123abcd",
        "ip eth0 10.20.0.17/24",
        "user-data start",
        "user-data exit=0",
    ):
        assert expected in markers, guest.diagnostics()
    assert markers.index("user-data start") < markers.index("user-data exit=0")
    assert markers.index("user-data exit=0") < markers.index("ready")
    assert "no cidata" not in markers
    assert not [m for m in markers if m.startswith("route ")], markers  # no route failed
    assert "\nhello-from-userdata\n" in guest.console()


def test_guest_without_seed_still_gets_ready_and_powers_off_on_acpi(
    guests: GuestLauncher,
) -> None:
    guest = guests.boot("bare", nics=[(MAC, "user")])

    markers = guest.wait_for("ready")
    assert "no cidata" in markers
    assert not [m for m in markers if m.startswith(("hostname=", "ip ", "user-data"))]
    assert "acpid is not listening" not in markers, guest.diagnostics()

    # What libvirt's graceful shutdown does: press the ACPI power button.
    guest.monitor("system_powerdown")
    assert guest.wait_exit(timeout=60) is not None, guest.diagnostics()
    assert "shutdown" in guest.markers()


def free_udp_ports(count: int) -> list[int]:
    """Distinct free UDP ports on 127.0.0.1 (held together while picked, then released)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_guests_on_one_segment_ping_each_other(guests: GuestLauncher, tmp_path: Path) -> None:
    """Two guests joined by a UDP-socket link: user-data pings the other guest."""
    port_a, port_b = free_udp_ports(2)
    guest_configs = {
        "a": ("52:54:00:00:00:0a", "10.30.0.10", "10.30.0.11", port_a, port_b),
        "b": ("52:54:00:00:00:0b", "10.30.0.11", "10.30.0.10", port_b, port_a),
    }
    booted = []
    for name, (mac, address, peer, local, remote) in guest_configs.items():
        directory = tmp_path / f"seed-{name}"
        directory.mkdir()
        # The peer may still be booting: wait for its first answer, then ping for real.
        user_data = (
            "#!/bin/sh\n"
            f"i=0; until ping -c 1 -W 1 {peer} >/dev/null; do\n"
            '  i=$((i + 1)); [ "$i" -lt 60 ] || break\n'
            "done\n"
            f"exec ping -c 3 {peer}\n"
        )
        network_config = (
            f"version: 2\nethernets:\n  nic0:\n    match:\n      macaddress: '{mac}'\n"
            f"    set-name: eth0\n    addresses:\n    - {address}/24\n"
        )
        seed = make_seed(
            directory,
            {
                "meta-data": f"instance-id: i-{name}\nlocal-hostname: guest-{name}\n",
                "user-data": user_data,
                "network-config": network_config,
            },
        )
        netdev = f"socket,udp=127.0.0.1:{remote},localaddr=127.0.0.1:{local}"
        booted.append((guests.boot(f"guest-{name}", nics=[(mac, netdev)], seed=seed), peer))

    for guest, peer in booted:
        markers = guest.wait_for("ready", timeout=180)
        assert "user-data exit=0" in markers, guest.diagnostics()
        assert "3 packets transmitted, 3 packets received, 0% packet loss" in guest.console()
        assert f"64 bytes from {peer}" in guest.console()


def free_tcp_port() -> int:
    """A free TCP port on 127.0.0.1 (released again: QEMU binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ssh_keypair(path: Path, comment: str) -> Path:
    """A throwaway ed25519 key pair: `path` (private) and `path`.pub."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        timeout=60,
    )
    return path


def ssh(key: Path, port: int, command: str) -> subprocess.CompletedProcess[str]:
    """Run `command` as root in the guest behind 127.0.0.1:`port`, offering only `key`."""
    return subprocess.run(
        [
            *("ssh", "-F", "/dev/null", "-i", str(key), "-p", str(port)),
            *("-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"),
            *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
            *("-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"),
            *("root@127.0.0.1", command),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_root_logs_in_over_ssh_with_the_seed_key_only(
    guests: GuestLauncher, tmp_path: Path
) -> None:
    """The guest's sshd lets root in with meta-data's public-keys, and no other key."""
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("ssh and ssh-keygen not installed: run hack/install-deps")
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    # A comment long enough that a YAML writer wrapping at 80 columns would fold the key.
    allowed = ssh_keypair(keys / "allowed", "allowed key of a user@a-host.with-a-long-name.example")
    stranger = ssh_keypair(keys / "stranger", "stranger@elsewhere")
    public_key = allowed.with_suffix(".pub").read_text().strip()
    # QEMU's user-mode network: the guest is 10.0.2.15 behind a NAT at 10.0.2.2, and QEMU
    # forwards a host port on loopback to the guest's port 22.
    network_config = (
        f"version: 2\nethernets:\n  nic0:\n    match:\n      macaddress: '{MAC}'\n"
        "    set-name: eth0\n    addresses:\n    - 10.0.2.15/24\n    gateway4: 10.0.2.2\n"
    )
    seed = make_seed(
        tmp_path,
        {
            # As the agent writes it.
            "meta-data": nocloud.meta_data(
                CloudInit(instance_id="i-ssh", hostname="sshd-1", ssh_keys=[public_key])
            ),
            "network-config": network_config,
        },
    )
    port = free_tcp_port()
    guest = guests.boot("sshd-1", nics=[(MAC, f"user,hostfwd=tcp:127.0.0.1:{port}-:22")], seed=seed)

    markers = guest.wait_for("sshd started keys=1", timeout=180)
    assert "ip eth0 10.0.2.15/24" in markers, guest.diagnostics()

    # The first connection also makes the host key, which TCG slows down: retry a while.
    deadline = time.monotonic() + 120
    while True:
        result = ssh(allowed, port, "echo hello-from-$(hostname)")
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert (result.returncode, result.stdout) == (0, "hello-from-sshd-1\n"), (
        f"{result}\n{guest.diagnostics()}"
    )

    refused = ssh(stranger, port, "echo in")
    assert refused.returncode != 0 and refused.stdout == "", refused
    assert "Permission denied (publickey)" in refused.stderr, refused
