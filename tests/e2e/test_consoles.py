"""Consoles end to end on the all-in-one: a real guest's serial console and VNC display
through the console proxy and the agent, with a user's own token; `kubectl stratus` drives
the lifecycle verbs and the console; and a keystroke's echo timed through the proxy against
the same through `virsh console`."""

from __future__ import annotations

import asyncio
import json
import os
import select
import ssl
import statistics
import subprocess
import time
import urllib.request

import aiohttp

from allinone_kit import BOOT_TIMEOUT, Cloud, boot_marker, small_instance
from testsupport import REPO_ROOT, wait_until

ARTIFACTS = REPO_ROOT / "test-artifacts"
ECHOES = 20


def token(cloud: Cloud) -> str:
    return cloud.kubectl("create", "token", "developer", "-n", "default").strip()


def tls(cloud: Cloud) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cloud.dev.plane.pki_dir / "ca.crt"))


async def read_until(ws: aiohttp.ClientWebSocketResponse, marker: bytes, timeout: float = 60
                     ) -> bytes:  # fmt: skip
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        message = await ws.receive(timeout=max(deadline - time.monotonic(), 0.1))
        assert message.type is aiohttp.WSMsgType.BINARY, (message, ws.close_code, seen[-300:])
        seen += message.data
    return seen


async def echo_times(ws: aiohttp.ClientWebSocketResponse) -> list[float]:
    """Seconds from a keystroke sent to its echo received, ECHOES times."""
    times = []
    for _ in range(ECHOES):
        began = time.perf_counter()
        await ws.send_bytes(b"x")
        await read_until(ws, b"x", timeout=10)
        times.append(time.perf_counter() - began)
    await ws.send_bytes(b"\x15")  # Ctrl-U: the line is dropped
    return times


def virsh_echo_times(domain: str) -> list[float]:
    """The same through `virsh console` on the node: a pty for its terminal."""
    leader, follower = os.openpty()
    virsh = subprocess.Popen(["virsh", "-c", "qemu:///system", "console", domain, "--force"],
                             stdin=follower, stdout=follower, stderr=follower)  # fmt: skip
    os.close(follower)

    def until(marker: bytes, timeout: float = 20, poke: bytes = b"") -> None:
        """Read until `marker`, failing at the deadline (never blocked in a read); `poke`
        is sent again each quiet second (a keystroke lost while the console changed hands
        from the proxy's stream to virsh is pressed again, as a user would)."""
        seen, deadline = b"", time.monotonic() + timeout
        while marker not in seen:
            left = deadline - time.monotonic()
            assert left > 0, seen[-300:]
            if select.select([leader], [], [], min(left, 1.0))[0]:
                seen += os.read(leader, 4096)
            elif poke:
                os.write(leader, poke)

    try:
        until(b"Escape character")
        os.write(leader, b"\r")
        until(b"#", poke=b"\r")
        times = []
        for _ in range(ECHOES):
            began = time.perf_counter()
            os.write(leader, b"x")
            until(b"x", timeout=10)
            times.append(time.perf_counter() - began)
        os.write(leader, b"\x15\x1d")  # drop the line, leave
        return times
    finally:
        try:
            virsh.wait(timeout=5)  # Ctrl-] ends it
        except subprocess.TimeoutExpired:
            virsh.kill()
            virsh.wait()
        os.close(leader)


def test_a_user_types_into_the_serial_console_and_sees_the_display(cloud: Cloud) -> None:
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples"))
    cloud.kubectl("apply", "-f", "-", input=json.dumps(small_instance("talker")))
    cloud.kubectl("wait", "--for=condition=Ready", "instance/talker",
                  f"--timeout={BOOT_TIMEOUT:.0f}s")  # fmt: skip
    boot_marker(cloud, "talker", "STRATUS-GUEST: ready")
    url = f"wss://127.0.0.1:{cloud.dev.console_port}/v1/namespaces/default/instances/talker"
    headers = {"Authorization": f"Bearer {token(cloud)}"}

    async def sessions() -> tuple[list[float], bytes]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{url}/console", headers=headers,
                                          ssl=tls(cloud)) as ws:  # fmt: skip
                await ws.send_bytes(b"\r")
                await read_until(ws, b"#")
                await ws.send_bytes(b"echo STRATUS-$((6*7))\r")
                await read_until(ws, b"STRATUS-42")  # the shell ran it: only it computes 42
                times = await echo_times(ws)
            async with session.ws_connect(f"{url}/vnc", headers=headers, ssl=tls(cloud)) as ws:
                banner = (await ws.receive(timeout=10)).data
        return times, banner

    proxied, banner = asyncio.run(sessions())
    assert banner.startswith(b"RFB 003.")  # the guest's VNC display answers through it
    uid = cloud.instance("talker")["metadata"]["uid"]
    direct = virsh_echo_times(f"stratus-{uid}")
    ARTIFACTS.mkdir(exist_ok=True)
    report = (
        f"keystroke echo over {ECHOES} keystrokes, median (max): through the console "
        f"proxy and the agent {statistics.median(proxied) * 1000:.1f} ms "
        f"({max(proxied) * 1000:.1f} ms); through virsh console "
        f"{statistics.median(direct) * 1000:.1f} ms ({max(direct) * 1000:.1f} ms)\n"
    )
    (ARTIFACTS / "console-latency.txt").write_text(report)
    print(report)


def test_kubectl_stratus_drives_the_verbs_and_the_console(cloud: Cloud) -> None:
    env = {**os.environ, "KUBECONFIG": str(cloud.dev.plane.kubeconfig),
           "PATH": f"{cloud.dev.plane.user_bin_dir}:{os.environ['PATH']}",
           "STRATUS_CONSOLE_SERVER": cloud.dev.console_url,
           "STRATUS_CONSOLE_CA": str(cloud.dev.plane.pki_dir / "ca.crt"),
           "STRATUS_TOKEN": token(cloud)}  # fmt: skip

    def plugin(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", "stratus", *args], env=env, input=stdin, text=True,
                              capture_output=True, timeout=120, check=False)  # fmt: skip

    def phase() -> str:
        return str(cloud.instance("talker")["status"]["phase"])

    done = plugin("stop", "talker")
    assert done.returncode == 0, done.stderr
    wait_until("Stopped", lambda: phase() == "Stopped", timeout=120)
    # A stopped Instance's console: refused with a reason the plugin shows.
    refused = plugin("console", "talker", stdin="")
    assert "not running" in refused.stderr, refused.stderr
    assert plugin("start", "talker").returncode == 0
    wait_until("Running", lambda: phase() == "Running", timeout=120)
    boot_marker(cloud, "talker", "STRATUS-GUEST: ready")
    attached = plugin("console", "talker", stdin="\recho PLUGIN-$((6*6))\r")
    assert "PLUGIN-36" in attached.stdout, (attached.stdout[-500:], attached.stderr)

    # `vnc`: a local noVNC page whose WebSocket reaches the guest's display.
    served = subprocess.Popen(["kubectl", "stratus", "vnc", "talker"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert served.stdout is not None
        page = served.stdout.readline().strip()
        assert page.startswith("http://127.0.0.1:") and "vnc.html" in page, page
        local = page.split("/vnc.html")[0]
        with urllib.request.urlopen(page, timeout=30) as reply:
            assert b"noVNC" in reply.read()

        async def banner() -> bytes:
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(
                    local.replace("http:", "ws:") + "/websockify", protocols=("binary",)
                ) as ws,
            ):
                return bytes((await ws.receive(timeout=10)).data)

        assert asyncio.run(banner()).startswith(b"RFB 003.")
    finally:
        served.terminate()
        served.wait(timeout=10)
    cloud.kubectl("delete", "instance", "talker", "--timeout=120s")
