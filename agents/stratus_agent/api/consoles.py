"""A guest's serial console and VNC display as WebSocket streams of bytes.

Only the operator's console proxy reaches them, with the node's API token like every other
route: users never talk to an agent. The serial console is the guest's pty, set raw as
libvirt sets it for `virsh console`; one session at a time holds it. VNC is relayed to the
display QEMU serves on the node's loopback. Content is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty
from collections.abc import AsyncIterator

from aiohttp import WSMsgType, web

from stratus_agent.manager.guests import GuestManager
from stratus_api.guest import GuestStatus

log = logging.getLogger(__name__)

# Bytes per WebSocket message either way: a console line or a VNC update; a bigger frame
# closes the session (1009), it never reaches the guest.
MAX_FRAME_BYTES = 256 * 1024
READ_CHUNK_BYTES = 64 * 1024
VNC_HOST = "127.0.0.1"  # NodeFacts.vnc_listen: QEMU serves displays on loopback only


class ConsoleError(Exception):
    """Why a session cannot start: HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Consoles:
    """The sessions open on this node: one per guest's serial console."""

    def __init__(self, manager: GuestManager) -> None:
        self._manager = manager
        self._serial: set[str] = set()

    @contextlib.asynccontextmanager
    async def serial(self, uid: str) -> AsyncIterator[tuple[asyncio.StreamReader, Writer]]:
        """The guest's console pty, held for the session."""
        self._known(uid)
        device = await self._manager.compute.console_device(uid)
        if device is None:
            raise ConsoleError(409, f"guest {uid} is not running or has no serial console")
        if uid in self._serial:
            raise ConsoleError(409, f"another session holds the serial console of guest {uid}")
        self._serial.add(uid)
        try:
            fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            self._serial.discard(uid)
            raise ConsoleError(409, f"guest {uid}: the console cannot be opened: {exc}") from None
        try:
            tty.setraw(fd)  # no echo, no line editing: every byte passes as it is
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=READ_CHUNK_BYTES)
            pipe = os.fdopen(fd, "rb", buffering=0, closefd=False)
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), pipe
            )
            try:
                yield reader, Writer(fd)
            finally:
                transport.close()
        finally:
            os.close(fd)
            self._serial.discard(uid)

    @contextlib.asynccontextmanager
    async def vnc(self, uid: str) -> AsyncIterator[tuple[asyncio.StreamReader, Writer]]:
        """A connection to the guest's VNC display."""
        self._known(uid)
        port = await self._manager.compute.vnc_port(uid)
        if port is None:
            raise ConsoleError(409, f"guest {uid} is not running or has no VNC display")
        try:
            reader, writer = await asyncio.open_connection(VNC_HOST, port)
        except OSError as exc:
            raise ConsoleError(409, f"guest {uid}: its display does not answer: {exc}") from None
        try:
            yield reader, Writer(writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _known(self, uid: str) -> GuestStatus:
        status = self._manager.status(uid)
        if status is None:
            raise ConsoleError(404, f"no guest {uid} on this node")
        return status


class Writer:
    """Bytes to the guest: a pty (non-blocking, so a full buffer waits) or a socket."""

    def __init__(self, target: int | asyncio.StreamWriter) -> None:
        self._target = target

    async def write(self, data: bytes) -> None:
        if isinstance(self._target, asyncio.StreamWriter):
            self._target.write(data)
            await self._target.drain()
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._target, view) :]
            except BlockingIOError:
                await asyncio.sleep(0.01)  # the guest reads slower than the user types


async def relay(
    request: web.Request, opened: contextlib.AbstractAsyncContextManager[
        tuple[asyncio.StreamReader, Writer]],
) -> web.StreamResponse:  # fmt: skip
    """Bridge the request's WebSocket and the guest's stream until either ends."""
    try:
        async with opened as (reader, writer):
            ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=30.0)
            await ws.prepare(request)
            await _pump(ws, reader, writer)
            return ws
    except ConsoleError as exc:
        return web.json_response({"message": str(exc)}, status=exc.status)


async def _pump(ws: web.WebSocketResponse, reader: asyncio.StreamReader, writer: Writer) -> None:
    async def to_guest() -> None:
        async for message in ws:
            if message.type is WSMsgType.BINARY:
                await writer.write(message.data)
            elif message.type is WSMsgType.TEXT:
                await writer.write(message.data.encode())
            else:
                return

    async def from_guest() -> None:
        while data := await reader.read(READ_CHUNK_BYTES):
            await ws.send_bytes(data)

    tasks = [asyncio.create_task(to_guest()), asyncio.create_task(from_guest())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.info("console session ended: %s", type(task.exception()).__name__)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ws.close()
