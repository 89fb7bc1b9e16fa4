"""`kubectl stratus`: an Instance's consoles and lifecycle verbs from kubectl.

Installed as the executable `kubectl-stratus` (kubectl finds plugins on PATH). The verbs
patch the Instance through kubectl itself, with whatever credentials it has. The consoles
go through Stratus' console proxy with the user's own token (from the kubeconfig, or
--token), so the proxy applies the user's RBAC: get on instances/console or instances/vnc.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import shutil
import ssl
import subprocess
import sys
import termios
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import click
import yaml
from aiohttp import WSMsgType, web

from stratus_api.v1alpha1.instance import VERBS, verb_patch

ESCAPE = b"\x1d"  # Ctrl-], as virsh console and telnet
QUIET_SECONDS = 3.0  # after piped input ends, how long the guest's answer is waited for
NOVNC_DIR = Path("/usr/share/novnc")  # Debian's novnc


@dataclass(frozen=True)
class Target:
    """Where the console proxy is and who the user is to it."""

    server: str
    token: str
    namespace: str
    ssl: ssl.SSLContext

    def url(self, name: str, kind: str) -> str:
        return f"{self.server.rstrip('/')}/v1/namespaces/{self.namespace}/instances/{name}/{kind}"


def _kubeconfig() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the current context, its user) from KUBECONFIG's first file or ~/.kube/config."""
    path = Path(os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or "~/.kube/config")
    try:
        config = yaml.safe_load(path.expanduser().read_text()) or {}
    except OSError:
        return {}, {}
    current = config.get("current-context")
    context = next((c.get("context") or {} for c in config.get("contexts") or []
                    if c.get("name") == current), {})  # fmt: skip
    user = next((u.get("user") or {} for u in config.get("users") or []
                 if u.get("name") == context.get("user")), {})  # fmt: skip
    return context, user


def _target(
    namespace: str | None, server: str | None, token: str | None, ca: str | None, insecure: bool
) -> Target:
    context, user = _kubeconfig()
    server = server or os.environ.get("STRATUS_CONSOLE_SERVER")
    if not server:
        raise click.UsageError(
            "where is the console proxy? Pass --server https://HOST:PORT or set "
            "STRATUS_CONSOLE_SERVER (`stratus dev up` prints it)"
        )
    token = token or os.environ.get("STRATUS_TOKEN") or user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    if not token:
        raise click.UsageError(
            "the console proxy takes a Kubernetes token and your kubeconfig's user has none "
            '(a client certificate?): pass --token, e.g. --token "$(kubectl create token '
            'ACCOUNT)"'
        )
    context_ssl = ssl.create_default_context(cafile=ca or os.environ.get("STRATUS_CONSOLE_CA"))
    if insecure:
        context_ssl.check_hostname = False
        context_ssl.verify_mode = ssl.CERT_NONE
    return Target(server, token, namespace or context.get("namespace") or "default", context_ssl)


def _connection_options(function: Any) -> Any:
    for option in reversed([
        click.option("-n", "--namespace", default=None,
                     help="The Instance's namespace (default: the context's, else default)."),
        click.option("--server", default=None, metavar="URL",
                     help="The console proxy (default: $STRATUS_CONSOLE_SERVER)."),
        click.option("--token", default=None, help="Your Kubernetes token (default: "
                     "$STRATUS_TOKEN, else the kubeconfig user's)."),
        click.option("--certificate-authority", "ca", default=None, metavar="FILE",
                     help="CA of the proxy's certificate (default: $STRATUS_CONSOLE_CA)."),
        click.option("--insecure-skip-tls-verify", "insecure", is_flag=True,
                     help="Do not verify the proxy's certificate."),
    ]):  # fmt: skip
        function = option(function)
    return function


@click.group()
def main() -> None:
    """Consoles and lifecycle verbs of Stratus Instances."""


@main.command()
@click.argument("name")
@_connection_options
def console(name: str, namespace: str | None, server: str | None, token: str | None,
            ca: str | None, insecure: bool) -> None:  # fmt: skip
    """Attach this terminal to the Instance's serial console (Ctrl-] leaves)."""
    target = _target(namespace, server, token, ca, insecure)
    click.echo(f"Connected to {target.namespace}/{name}'s serial console; Ctrl-] leaves.",
               err=True)  # fmt: skip
    reason, refused = asyncio.run(_attach(target.url(name, "console"), target))
    if refused:
        raise click.ClickException(reason)
    click.echo(f"\r\n{reason}", err=True)


async def _attach(url: str, target: Target) -> tuple[str, bool]:
    """How the session ended, and whether the proxy refused it (a 44xx close)."""
    headers = {"Authorization": f"Bearer {target.token}"}
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(url, headers=headers, ssl=target.ssl,
                                          protocols=("binary",))  # fmt: skip
        except aiohttp.WSServerHandshakeError as exc:
            raise click.ClickException(f"the console proxy refused: HTTP {exc.status}") from None
        async with ws, _raw_terminal() as keys:

            async def typed() -> bool:
                """Keystrokes to the guest until Ctrl-] (True) or the end of input."""
                while data := await keys.get():
                    if ESCAPE in data:
                        await ws.send_bytes(data.split(ESCAPE, 1)[0])
                        return True
                    await ws.send_bytes(data)
                return False

            typing = asyncio.create_task(typed())
            receiving = asyncio.create_task(_print_until_closed(ws))
            await asyncio.wait((typing, receiving), return_when=asyncio.FIRST_COMPLETED)
            if typing.done() and not typing.result():
                # Input from a pipe ended: the guest still answers what it was sent.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(receiving), QUIET_SECONDS)
            typing.cancel()
            receiving.cancel()
            refused = (ws.close_code or 0) >= 4000
            return (receiving.result() if receiving.done() else "left the console"), refused


async def _print_until_closed(ws: aiohttp.ClientWebSocketResponse) -> str:
    """Guest output to stdout until the proxy closes the stream; why it closed."""
    while True:
        message = await ws.receive()
        if message.type is WSMsgType.BINARY:
            sys.stdout.buffer.write(message.data)
            sys.stdout.buffer.flush()
        elif message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return f"closed by the console proxy: {message.extra or ws.close_code}"
        elif message.type is WSMsgType.ERROR:
            return f"the connection failed: {message.data}"


@contextlib.asynccontextmanager
async def _raw_terminal() -> Any:
    """Keystrokes from stdin, one chunk at a time, with the terminal raw (restored after)."""
    fd = sys.stdin.fileno()
    keys: asyncio.Queue[bytes] = asyncio.Queue()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    if saved is not None:
        tty.setraw(fd)
    loop = asyncio.get_running_loop()

    def readable() -> None:
        data = os.read(fd, 4096)
        keys.put_nowait(data)
        if not data:  # end of input (a pipe): nothing more will come
            loop.remove_reader(fd)

    loop.add_reader(fd, readable)
    try:
        yield keys
    finally:
        loop.remove_reader(fd)
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@main.command()
@click.argument("name")
@_connection_options
@click.option("--port", type=int, default=0, help="Local port of the page (default: any free).")
def vnc(name: str, namespace: str | None, server: str | None, token: str | None,
        ca: str | None, insecure: bool, port: int) -> None:  # fmt: skip
    """Serve the Instance's display in a local noVNC page and print its URL (Ctrl-C ends).
    The page talks to this process, which holds your token; the browser never sees it."""
    if not (NOVNC_DIR / "vnc.html").exists():
        raise click.ClickException(f"noVNC is not installed ({NOVNC_DIR}): apt install novnc")
    target = _target(namespace, server, token, ca, insecure)
    asyncio.run(_serve_vnc(target, name, port))


async def _serve_vnc(target: Target, name: str, port: int) -> None:
    async def relay(request: web.Request) -> web.StreamResponse:
        page = web.WebSocketResponse(protocols=("binary",))
        await page.prepare(request)
        async with aiohttp.ClientSession() as session:
            try:
                upstream = await session.ws_connect(
                    target.url(name, "vnc"), ssl=target.ssl, protocols=("binary",),
                    headers={"Authorization": f"Bearer {target.token}"},
                )  # fmt: skip
            except aiohttp.WSServerHandshakeError as exc:
                await page.close(code=4000 + exc.status, message=b"the console proxy refused")
                return page
            async with upstream:
                await _pipe(page, upstream)
        return page

    app = web.Application()
    app.router.add_get("/websockify", relay)
    app.router.add_static("/", NOVNC_DIR)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    click.echo(f"http://127.0.0.1:{bound}/vnc.html?autoconnect=1&resize=scale&path=websockify")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def _pipe(page: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    async def down() -> None:
        async for message in upstream:
            if message.type is not WSMsgType.BINARY:
                break
            await page.send_bytes(message.data)

    async def up() -> None:
        async for message in page:
            if message.type is not WSMsgType.BINARY:
                break
            await upstream.send_bytes(message.data)

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    await page.close()


def _patch(name: str, namespace: str | None, spec: dict[str, Any]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise click.ClickException("kubectl is not on PATH")
    where = ["-n", namespace] if namespace else []
    done = subprocess.run([kubectl, "patch", "instance", name, *where, "--type=merge", "-p",
                           json.dumps({"spec": spec})], check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(done.returncode)


def _verb(verb: str) -> None:
    @main.command(verb, help=f"{verb.capitalize()} the Instance (patches its spec).")
    @click.argument("name")
    @click.option("-n", "--namespace", default=None, help="The Instance's namespace.")
    def command(name: str, namespace: str | None) -> None:
        _patch(name, namespace, verb_patch(verb, datetime.datetime.now(datetime.UTC)))


for _name in VERBS:
    _verb(_name)
