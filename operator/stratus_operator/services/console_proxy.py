"""The console proxy: an Instance's serial console and VNC display as WebSocket streams, for
users with the right to them, through the agent of the Instance's node.

A caller brings their own Kubernetes token (an Authorization header, or for browsers the
`base64url.bearer.authorization.k8s.io.` subprotocol); the API server says who they are
and whether they may `get` `instances/console` or `instances/vnc` in the Instance's
namespace (services/access.py), so an admin grants consoles per namespace with RBAC. Only
then is the WebSocket accepted; what follows (no such Instance, not running, the node's
agent refusing) closes it with a 44xx code and a reason a browser can show. The agent is
reached with the node's token, which users never see. Every session is logged with who,
which Instance and how long; its content never. Every replica serves it: it reads the
Instance and its Hypervisor from the API server, not from the leader's indexes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from stratus_api.v1alpha1 import Hypervisor
from stratus_operator.services.access import Access, bearer
from stratus_operator.services.agent_client import tls_context
from stratus_operator.services.kube import Kube, KubeError, NotLoggedIn
from stratus_operator.services.runtime import AgentNotConfigured, AgentPool
from stratus_operator.services.settings import ConsoleSettings

log = logging.getLogger(__name__)
KINDS = {"console": "console", "vnc": "vnc"}  # URL part -> instances/<subresource>
# Close codes in the application range, after the HTTP statuses they mean.
NOT_FOUND, NOT_RUNNING, UNAVAILABLE, IDLE = 4404, 4409, 4503, 4408
PROTOCOLS = ("binary", "stratus.io.console")  # what a client may ask beside its token


NO_TOKEN = ("send your Kubernetes token: an Authorization: Bearer header or the "
            "base64url.bearer.authorization.k8s.io. subprotocol")  # fmt: skip


class Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass
class Session:
    who: str
    instance: str  # namespace/name
    kind: str
    started: float
    received: int = 0  # bytes from the user
    sent: int = 0  # bytes to the user

    def ended(self, how: str) -> None:
        log.info("console session: %s %s of Instance %s for %.1f s (%d bytes in, %d out): %s",
                 self.who, self.kind, self.instance, time.monotonic() - self.started,
                 self.received, self.sent, how)  # fmt: skip


class ConsoleProxy:
    def __init__(
        self, kube: Kube, access: Access, settings: ConsoleSettings,
        browser_token: Callable[[web.Request], str | None] | None = None,
    ) -> None:  # fmt: skip
        """`browser_token`: the token of a signed-in dashboard session whose page opens the
        stream (a cookie, from this site only), for callers that bring none of their own."""
        self._kube = kube
        self._browser_token = browser_token
        self._access = access
        self._settings = settings
        self._agents = AgentPool(kube, settings.connect_timeout_seconds)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        kind = KINDS[request.match_info["kind"]]
        token = bearer(request.headers.get("Authorization", ""),
                       request.headers.get("Sec-WebSocket-Protocol", ""))  # fmt: skip
        if token is None and self._browser_token is not None:
            token = self._browser_token(request)
        if token is None:
            return _error(401, NO_TOKEN)
        try:
            verdict, who = await self._access.admit(token, _attributes(namespace, name, kind))
        except (KubeError, NotLoggedIn, OSError) as exc:
            log.warning("console: the API server did not review a caller: %s", exc)
            return _error(503, "the API server did not answer; retry")
        if who is None:
            return _error(401, "the API server does not accept this token")
        if verdict != 200:
            return _error(403, f"{who.username} may not get instances/{kind} of "
                               f"{namespace}/{name}")  # fmt: skip
        ws = web.WebSocketResponse(protocols=PROTOCOLS, heartbeat=30.0,
                                   max_msg_size=self._settings.max_frame_bytes)  # fmt: skip
        await ws.prepare(request)
        session = Session(who.username, f"{namespace}/{name}", kind, time.monotonic())
        how = "closed"
        try:
            async with self._upstream(namespace, name, kind) as upstream:
                how = await self._relay(ws, upstream, session)
        except Refused as exc:
            how = f"refused: {exc}"
            await ws.close(code=exc.code, message=str(exc)[:120].encode())
        finally:
            session.ended(how)
            await ws.close()
        return ws

    @contextlib.asynccontextmanager
    async def _upstream(
        self, namespace: str, name: str, kind: str
    ) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        """The agent's stream of the Instance's console."""
        instance = await self._one("instances", namespace, name)
        if instance is None:
            raise Refused(NOT_FOUND, f"no Instance {namespace}/{name}")
        status = instance.get("status") or {}
        node, uid = status.get("node"), instance["metadata"]["uid"]
        if not node or status.get("phase") not in ("Running", "Paused"):
            raise Refused(NOT_RUNNING, f"Instance {namespace}/{name} is not running "
                                       f"(phase {status.get('phase') or 'Pending'})")  # fmt: skip
        found = await self._one("hypervisors", None, node)
        if found is None:
            raise Refused(UNAVAILABLE, f"the Instance's Hypervisor {node} is gone")
        try:
            endpoint = await self._agents.endpoint(Hypervisor.model_validate(found))
        except AgentNotConfigured as exc:
            raise Refused(UNAVAILABLE, f"Hypervisor {node}: {exc}") from None
        url = f"{endpoint.url.rstrip('/')}/v1/guests/{uid}/{kind}"
        secure = endpoint.url.startswith("https")
        timeout = aiohttp.ClientTimeout(total=None, connect=self._settings.connect_timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                upstream = await session.ws_connect(
                    url, headers={"Authorization": f"Bearer {endpoint.token}"},
                    ssl=tls_context(endpoint.ca_pem) if secure else False,
                    max_msg_size=self._settings.max_frame_bytes, heartbeat=30.0,
                )  # fmt: skip
            except aiohttp.WSServerHandshakeError as exc:
                code = NOT_RUNNING if exc.status == 409 else UNAVAILABLE
                raise Refused(code, f"the node refused: HTTP {exc.status}") from None
            except (aiohttp.ClientError, OSError) as exc:
                raise Refused(UNAVAILABLE, f"the node's agent does not answer: "
                                           f"{type(exc).__name__}") from None  # fmt: skip
            try:
                yield upstream
            finally:
                await upstream.close()

    async def _one(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """An object by name through `list` (the operator's rights have no `get`)."""
        try:
            by_name = f"metadata.name={name}"
            found = await self._kube.list_objects(plural, namespace, field_selector=by_name)
        except (KubeError, NotLoggedIn, OSError) as exc:
            raise Refused(UNAVAILABLE, f"the API server did not answer: {exc}"[:120]) from None
        return found[0] if found else None

    async def _relay(
        self, ws: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse,
        session: Session,
    ) -> str:  # fmt: skip
        """Bytes both ways until either side ends or both are idle; how it ended."""
        last = [time.monotonic()]

        async def user_to_guest() -> str:
            async for message in ws:
                if message.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    break
                data = message.data if message.type is WSMsgType.BINARY else message.data.encode()
                session.received += len(data)
                last[0] = time.monotonic()
                await upstream.send_bytes(data)  # waits while the node is slower: no flood
            if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
                return "a frame over the size limit"
            return "the user closed it"

        async def guest_to_user() -> str:
            async for message in upstream:
                if message.type is not WSMsgType.BINARY:
                    break
                session.sent += len(message.data)
                last[0] = time.monotonic()
                await ws.send_bytes(message.data)
            return "the guest's side closed it"

        async def idle() -> str:
            limit = self._settings.idle_seconds
            while (left := last[0] + limit - time.monotonic()) > 0:
                await asyncio.sleep(left)
            await ws.close(code=IDLE, message=f"idle for {limit:.0f} s".encode())
            return "idle"

        tasks = [asyncio.create_task(t()) for t in (user_to_guest, guest_to_user, idle)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            first = done.pop()
            return first.result() if first.exception() is None else (
                f"failed: {type(first.exception()).__name__}")  # fmt: skip
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _attributes(namespace: str, name: str, kind: str) -> dict[str, Any]:
    resource = {"namespace": namespace, "verb": "get", "group": "stratus.io",
                "resource": "instances", "subresource": kind, "name": name}  # fmt: skip
    return {"resourceAttributes": resource}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def app(proxy: ConsoleProxy) -> web.Application:
    application = web.Application()
    application.router.add_get(
        "/v1/namespaces/{namespace}/instances/{name}/{kind:console|vnc}", proxy.handle
    )
    return application
