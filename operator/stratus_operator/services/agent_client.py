"""The operator's client for one node agent: guest specs out, statuses and events back.

Failures become one small error tree, so a kopf handler chooses between "retry later" and
"tell the user" without knowing HTTP: replies are interpreted in `error_for_status` only,
transport failures in `_unavailable` only. The token never appears in a repr, a log line or
an error message, and request bodies (cloud-init user-data) are never logged.

Reconnecting is the caller's business: `AgentClient.events` follows one connection, and
`watch_events` is the reconnect loop the operator runs per node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import pydantic
from aiohttp import http_exceptions

from stratus_api import guest
from stratus_api.network_wire import NodeNetworkChange, NodeNetworkSpec
from stratus_api.router_wire import NodeRouterSpec
from stratus_api.security_group_wire import NodeSecurityGroupChange, NodeSecurityGroupSpec
from stratus_api.volume_wire import (
    NodeSnapshotSpec,
    NodeSnapshotStatus,
    NodeVolumeSpec,
    NodeVolumeStatus,
    VolumeInventory,
)

log = logging.getLogger(__name__)

Model = TypeVar("Model", bound=pydantic.BaseModel)
T = TypeVar("T")
OnConnect = Callable[[], Awaitable[None]]
OnEvent = Callable[[guest.GuestEvent], Awaitable[None]]

# Seconds for one whole request: the agent answers at once (a PUT only queues the work).
DEFAULT_TIMEOUT = 30.0
# Bytes: one event line is a few hundred; anything near this is not our protocol.
MAX_EVENT_LINE = 2**20
# Characters of a non-JSON error body kept in a message (proxies send whole HTML pages).
MAX_ERROR_BODY = 200
# Reports of one node applied at once (each waits for its status write).
REPORTS_IN_FLIGHT = 256


@dataclass(frozen=True)
class AgentEndpoint:
    """Where one node's agent listens, and how to trust it."""

    url: str  # base address, http:// or https://
    token: str = field(repr=False)
    ca_pem: bytes | None = field(default=None, repr=False)  # None: the system's CAs

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"agent address {self.url!r} is not an http(s) URL")
        if parts.username is not None:
            raise ValueError(f"agent address {parts.hostname}: credentials go in the token")
        if self.ca_pem is not None and parts.scheme != "https":
            raise ValueError(f"agent address {self.url} is plain http but a CA was given")


class AgentError(Exception):
    """A request to a node agent failed; `status` is the HTTP status if there was a reply."""

    def __init__(self, url: str, what: str, detail: str, *, status: int | None = None) -> None:
        super().__init__(f"agent {url}: {what}: {detail}")
        self.url = url
        self.what = what
        self.detail = detail
        self.status = status


class AgentUnavailable(AgentError):
    """Unreachable, TLS failure, timeout, connection lost, 5xx, 408 or 429: retry later."""


class AgentUnauthorized(AgentError):
    """401 or 403: the agent refused the token."""


class AgentRejected(AgentError):
    """Any other 4xx: the request is wrong, and sending it again will not help."""

    def __init__(
        self,
        url: str,
        what: str,
        detail: str,
        *,
        status: int,
        error: str,
        problems: tuple[str, ...] = (),
    ) -> None:
        super().__init__(url, what, detail, status=status)
        self.error = error
        self.problems = problems  # "path: message" per field, when the agent names them


class GuestNotFound(AgentError):
    """404 from the agent for a guest it does not have."""


def _agent_message(body: bytes) -> tuple[str, tuple[str, ...], bool]:
    """The agent's `{"error", "problems"}` reply as (error, problems, is_the_agent's)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        problems = parsed.get("problems")
        listed = tuple(str(p) for p in problems) if isinstance(problems, list) else ()
        return parsed["error"], listed, True
    text = body.decode("utf-8", errors="replace").strip()
    if len(text) > MAX_ERROR_BODY:
        text = text[:MAX_ERROR_BODY] + "..."
    return text or "(empty reply)", (), False


def error_for_status(
    url: str, what: str, status: int, body: bytes, *, guest_uid: str | None = None
) -> AgentError:
    """The error for an HTTP reply the request did not expect: the one place statuses mean
    something. A 404 is GuestNotFound only for a request about a guest, and only when the
    agent itself said so (a 404 from a router or proxy means a wrong address)."""
    error, problems, from_agent = _agent_message(body)
    detail = f"HTTP {status}: {error}"
    if status in (401, 403):
        return AgentUnauthorized(url, what, detail, status=status)
    if status == 404 and guest_uid is not None and from_agent:
        return GuestNotFound(url, what, detail, status=status)
    if status in (408, 429) or 500 <= status <= 599:
        return AgentUnavailable(url, what, detail, status=status)
    if 400 <= status <= 499:
        return AgentRejected(url, what, detail, status=status, error=error, problems=problems)
    return AgentError(url, what, f"unexpected {detail}", status=status)


def _unavailable(url: str, what: str, exc: BaseException) -> AgentUnavailable:
    """The error for a request that got no complete reply."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = exc.certificate_error
        reason = getattr(cause, "verify_message", None) or str(cause)
        detail = f"TLS certificate not trusted ({reason}); is the agent's CA the one configured?"
    elif isinstance(exc, aiohttp.ClientSSLError):
        detail = f"TLS handshake failed: {exc.os_error}"
    elif isinstance(exc, TimeoutError):
        detail = "timed out"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        detail = f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    else:
        detail = f"connection lost: {str(exc) or type(exc).__name__}"
    return AgentUnavailable(url, what, detail)


def tls_context(ca_pem: bytes | None) -> ssl.SSLContext:
    """Verify the agent's certificate and host name against `ca_pem`, else the system CAs."""
    if ca_pem is None:
        return ssl.create_default_context()
    try:
        # cadata takes PEM as str; bytes would be read as DER.
        return ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError) as exc:
        raise ValueError("the agent CA is not a PEM certificate") from exc


@dataclass
class AgentLink:
    """The state of the operator's event stream from one agent (for the metrics)."""

    connected: bool = False
    last_message: float = 0.0  # Unix time of its last line, heartbeats included

    def seen(self) -> None:
        self.last_message = time.time()


class AgentClient:
    """Typed calls to one agent. Use as `async with`; it closes only a session it made."""

    def __init__(
        self,
        endpoint: AgentEndpoint,
        session: aiohttp.ClientSession | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        on_error: Callable[[AgentError], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._on_error = on_error
        self._session = session
        self._owns_session = session is None
        self._base = endpoint.url.rstrip("/")
        # aiohttp's `ssl=True` is its default (verify against the system); unused for http.
        self._ssl: ssl.SSLContext | bool = (
            tls_context(endpoint.ca_pem) if endpoint.url.startswith("https") else True
        )

    async def __aenter__(self) -> Self:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def healthz(self) -> dict[str, Any]:
        what, raw = await self._call("GET", "/healthz")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise AgentError(self.endpoint.url, what, "reply is not a JSON object")
        return body

    async def inventory(self) -> guest.NodeInventory:
        what, raw = await self._call("GET", "/v1/guests")
        return self._parse(guest.NodeInventory, what, raw)

    async def get(self, uid: str) -> guest.GuestStatus | None:
        """The guest's status, or None if the agent has no such guest."""
        try:
            what, raw = await self._call("GET", _guest_path(uid), guest_uid=uid)
        except GuestNotFound:
            return None
        return self._parse(guest.GuestStatus, what, raw)

    async def ensure(self, spec: guest.GuestSpec) -> guest.GuestStatus:
        """PUT the spec (idempotent); the agent converges in the background."""
        body = spec.model_dump_json(by_alias=True)
        what, raw = await self._call("PUT", _guest_path(spec.uid), body=body, expect=202)
        return self._parse(guest.GuestStatus, what, raw)

    async def delete(self, uid: str) -> bool:
        """Remove the guest and its node-side files; False if there was none."""
        what, raw = await self._call("DELETE", _guest_path(uid))
        return self._flag(what, raw, "deleted")

    async def evict_image(self, uid: str) -> bool:
        """Drop the Image from the node's cache now, or as soon as no guest uses it; True if
        it was removed at once."""
        what, raw = await self._call("DELETE", "/v1/images/" + quote(uid, safe=""))
        return self._flag(what, raw, "evicted")

    async def forget_ceph_pool(self, uid: str) -> bool:
        """The CephPool is gone: the node stops serving it and removes its key; True if it
        held any of it."""
        what, raw = await self._call("DELETE", "/v1/cephpools/" + quote(uid, safe=""))
        return self._flag(what, raw, "forgotten")

    async def ensure_network(self, spec: NodeNetworkSpec) -> None:
        """PUT the node's share of a Network (its overlay peers): idempotent."""
        body = spec.model_dump_json(by_alias=True)
        await self._call("PUT", "/v1/networks/" + quote(spec.uid, safe=""), body=body)

    async def change_network(self, change: NodeNetworkChange) -> bool:
        """PATCH a change to the Network's share the node holds; False when it holds another
        revision (send the whole spec)."""
        return await self._change("/v1/networks/" + quote(change.uid, safe=""), change)

    async def forget_network(self, uid: str) -> bool:
        """The node hosts the Network no more; True if it held its share."""
        what, raw = await self._call("DELETE", "/v1/networks/" + quote(uid, safe=""))
        return self._flag(what, raw, "deleted")

    async def ensure_router(self, spec: NodeRouterSpec) -> None:
        """PUT the router to its node: idempotent; the node builds it now."""
        body = spec.model_dump_json(by_alias=True)
        await self._call("PUT", "/v1/routers/" + quote(spec.uid, safe=""), body=body)

    async def forget_router(self, uid: str) -> bool:
        """The router is not the node's any more; True if it held it."""
        what, raw = await self._call("DELETE", "/v1/routers/" + quote(uid, safe=""))
        return self._flag(what, raw, "deleted")

    async def ensure_security_group(self, spec: NodeSecurityGroupSpec) -> None:
        """PUT a group's rules to a node with a port in it: idempotent."""
        body = spec.model_dump_json(by_alias=True)
        await self._call("PUT", "/v1/security-groups/" + quote(spec.uid, safe=""), body=body)

    async def change_security_group(self, change: NodeSecurityGroupChange) -> bool:
        """PATCH a change to the group's rules the node holds; False when it holds another
        revision (send the whole spec)."""
        return await self._change("/v1/security-groups/" + quote(change.uid, safe=""), change)

    async def _change(self, path: str, change: NodeNetworkChange | NodeSecurityGroupChange) -> bool:
        try:
            await self._call("PATCH", path, body=change.model_dump_json(by_alias=True))
        except AgentRejected as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def forget_security_group(self, uid: str) -> bool:
        """No port of the node is in the group any more; True if it held its rules."""
        what, raw = await self._call("DELETE", "/v1/security-groups/" + quote(uid, safe=""))
        return self._flag(what, raw, "deleted")

    async def routers(self) -> list[str]:
        """UIDs of the routers the node holds."""
        what, raw = await self._call("GET", "/v1/routers")
        try:
            found = json.loads(raw).get("routers")
        except (ValueError, AttributeError):
            found = None
        if not isinstance(found, list) or not all(isinstance(u, str) for u in found):
            raise AgentError(self.endpoint.url, what, 'reply has no "routers" list')
        return found

    async def ensure_volume(self, spec: NodeVolumeSpec) -> NodeVolumeStatus:
        """PUT the volume spec (idempotent); the node makes or grows it in the background."""
        body = spec.model_dump_json(by_alias=True)
        what, raw = await self._call("PUT", _volume_path(spec.uid), body=body)
        return self._parse(NodeVolumeStatus, what, raw)

    async def delete_volume(self, uid: str) -> None:
        """Remove the volume's data (none there is fine); AgentRejected while a guest on the
        node uses it."""
        await self._call("DELETE", _volume_path(uid), expect=204)

    async def ensure_snapshot(self, spec: NodeSnapshotSpec) -> NodeSnapshotStatus:
        """PUT the snapshot spec (idempotent); the node copies the data in the background."""
        body = spec.model_dump_json(by_alias=True)
        what, raw = await self._call("PUT", _snapshot_path(spec.uid), body=body)
        return self._parse(NodeSnapshotStatus, what, raw)

    async def delete_snapshot(self, uid: str) -> None:
        """Remove the snapshot's data (none there is fine)."""
        await self._call("DELETE", _snapshot_path(uid), expect=204)

    async def volumes(self) -> VolumeInventory:
        what, raw = await self._call("GET", "/v1/volumes")
        return self._parse(VolumeInventory, what, raw)

    def _flag(self, what: str, raw: bytes, key: str) -> bool:
        """The boolean `key` of a JSON reply, or an AgentError."""
        try:
            value = json.loads(raw).get(key)
        except (ValueError, AttributeError):
            value = None
        if not isinstance(value, bool):
            raise AgentError(self.endpoint.url, what, f'reply has no boolean "{key}"')
        return value

    async def events(self, idle_timeout: float | None = None) -> AsyncIterator[guest.GuestEvent]:
        """Every line of one event stream, heartbeats included, until the agent ends it.

        Raises AgentUnavailable if the connection is lost or stays silent for
        `idle_timeout` seconds. Close it with `contextlib.aclosing` when leaving early.
        """
        async with self.event_stream(idle_timeout) as stream:
            async for event in stream:
                yield event

    @contextlib.asynccontextmanager
    async def event_stream(
        self, idle_timeout: float | None = None
    ) -> AsyncIterator[AsyncIterator[guest.GuestEvent]]:
        """Open GET /v1/events now and give its events to iterate, like `events`.

        Opening fails at once if the agent cannot be reached or refuses, so a caller knows
        it is connected before the first event arrives.
        """
        what = "GET /v1/events"
        session = self._require_session()
        try:
            async with asyncio.timeout(self.timeout):
                response = await session.get(
                    self._base + "/v1/events",
                    headers=self._headers(),
                    ssl=self._ssl,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(),  # a stream has no end; see idle_timeout
                )
                if response.status != 200:
                    async with response:
                        raw = await response.read()
                    raise error_for_status(self.endpoint.url, what, response.status, raw)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unavailable(self.endpoint.url, what, exc) from exc
        log.debug("agent %s: %s: connected", self.endpoint.url, what)
        try:
            yield self._read_events(response, what, idle_timeout)
        finally:
            response.close()

    async def _read_events(
        self, response: aiohttp.ClientResponse, what: str, idle_timeout: float | None
    ) -> AsyncIterator[guest.GuestEvent]:
        url = self.endpoint.url
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    line = await response.content.readline(max_line_length=MAX_EVENT_LINE)
            except TimeoutError as exc:
                silence = f"no event or heartbeat for {idle_timeout:g} s"
                raise AgentUnavailable(url, what, silence) from exc
            except aiohttp.ClientError as exc:
                raise _unavailable(url, what, exc) from exc
            except http_exceptions.LineTooLong as exc:
                raise AgentError(url, what, f"event line over {MAX_EVENT_LINE} bytes") from exc
            if not line:
                return  # the agent ended the stream, e.g. because this reader fell behind
            if line.strip():
                yield self._parse(guest.GuestEvent, what, line)

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("AgentClient used outside `async with` and without a session")
        return self._session

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.endpoint.token}", "Accept": "application/json"}

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: str | None = None,
        expect: int = 200,
        guest_uid: str | None = None,
    ) -> tuple[str, bytes]:
        """One request; returns (what, the reply body) or raises an AgentError (told to
        `on_error`, except a guest the agent does not have)."""
        try:
            return await self._request(method, path, body, expect, guest_uid)
        except GuestNotFound:
            raise
        except AgentError as exc:
            if self._on_error is not None:
                self._on_error(exc)
            raise

    async def _request(
        self, method: str, path: str, body: str | None, expect: int, guest_uid: str | None
    ) -> tuple[str, bytes]:
        what = f"{method} {path}"
        headers = self._headers()
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._require_session().request(
                method,
                self._base + path,
                data=body,
                headers=headers,
                ssl=self._ssl,
                allow_redirects=False,  # never replay the token to another address
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unavailable(self.endpoint.url, what, exc) from exc
        log.debug("agent %s: %s -> %d", self.endpoint.url, what, response.status)
        if response.status != expect:
            raise error_for_status(
                self.endpoint.url, what, response.status, raw, guest_uid=guest_uid
            )
        return what, raw

    def _parse(self, model: type[Model], what: str, raw: bytes) -> Model:
        try:
            return model.model_validate_json(raw)
        except pydantic.ValidationError as exc:
            detail = f"reply is not a {model.__name__} ({exc.error_count()} problems)"
            raise AgentError(self.endpoint.url, what, detail) from exc


# The event types that carry a node's report on one object.
REPORTS = frozenset({"guest", "volume", "snapshot"})


def _guest_path(uid: str) -> str:
    return "/v1/guests/" + quote(uid, safe="")


def _volume_path(uid: str) -> str:
    return "/v1/volumes/" + quote(uid, safe="")


def _snapshot_path(uid: str) -> str:
    return "/v1/snapshots/" + quote(uid, safe="")


async def watch_events(
    client: AgentClient,
    on_connect: OnConnect,
    on_event: OnEvent,
    stop: asyncio.Event,
    backoff: tuple[float, float] = (0.5, 10.0),
    idle_timeout: float = 30.0,
    link: AgentLink | None = None,
) -> None:
    """Follow the agent's events until `stop` is set, reconnecting whenever a stream ends.

    After every (re)connection `on_connect` runs before any event reaches `on_event`: it is
    where whatever was missed while disconnected is recovered (the operator re-reads the
    inventory). Reports about different objects go through `on_event` concurrently, those
    about one object in order (see _Reports). Heartbeats are not passed on. A connection
    silent for `idle_timeout` seconds is taken for dead, so set it above the agent's
    heartbeat. The delay between
    attempts doubles from backoff[0] up to backoff[1], and drops back to backoff[0] after a
    connection that delivered anything. AgentErrors, from the stream or from `on_connect`,
    lead to a reconnection; any other exception from a callback ends the watch. `link`
    follows the connection for the metrics.
    """
    link = link if link is not None else AgentLink()
    first, cap = backoff
    delay = first
    while not stop.is_set():
        alive = await _until(stop, _follow(client, on_connect, on_event, idle_timeout, link))
        if alive is None:
            return  # stopped
        if alive:
            delay = first
        await _until(stop, asyncio.sleep(delay))
        delay = min(delay * 2, cap)


def _subject(event: guest.GuestEvent) -> tuple[str, str]:
    """What a report is about: its kind and the UID of its object."""
    report = event.guest or event.volume or event.snapshot
    return event.type, report.uid if report is not None else ""


class _Reports:
    """Hands reports to `on_event` concurrently, in arrival order per subject.

    A node reports a thousand guests at once after a burst of creates; written one after
    the other, each waits for the API round trip of the one before. Reports about one
    object still go through `on_event` one at a time, in the order they arrived. At most
    `limit` are in flight: past that, reading the stream waits (the agent buffers). The
    first exception out of `on_event` is raised by `check` and `drain`.
    """

    def __init__(self, on_event: OnEvent, limit: int = REPORTS_IN_FLIGHT) -> None:
        self._on_event = on_event
        self._slots = asyncio.Semaphore(limit)
        self._last: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None

    async def submit(self, event: guest.GuestEvent) -> None:
        self.check()
        await self._slots.acquire()
        key = _subject(event)
        task = asyncio.create_task(self._run(self._last.get(key), event))
        self._last[key] = task
        self._running.add(task)
        task.add_done_callback(lambda done: self._done(key, done))

    async def _run(self, before: asyncio.Task[None] | None, event: guest.GuestEvent) -> None:
        if before is not None:
            await asyncio.wait((before,))  # its outcome is _done's business
        await self._on_event(event)

    def _done(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        self._slots.release()
        self._running.discard(task)
        if self._last.get(key) is task:
            del self._last[key]
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()

    def check(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def drain(self) -> None:
        """Wait for every report in flight; raise the first failure."""
        while self._running:
            await asyncio.wait(set(self._running))
        self.check()

    async def cancel(self) -> None:
        for task in self._running:
            task.cancel()
        if self._running:
            await asyncio.wait(set(self._running))


async def _follow(
    client: AgentClient, on_connect: OnConnect, on_event: OnEvent, idle_timeout: float,
    link: AgentLink,
) -> bool:  # fmt: skip
    """One connection; True if it delivered anything (the agent was alive and well). Every
    report it delivered has gone through `on_event` when it returns."""
    alive = False
    reports = _Reports(on_event)
    try:
        async with client.event_stream(idle_timeout) as stream:
            await on_connect()
            link.connected = True
            link.seen()
            async for event in stream:
                alive = True
                link.seen()
                # Reports only: a resync is on_connect's, heartbeats keep it alive.
                if event.type in REPORTS:
                    await reports.submit(event)
            await reports.drain()
    except AgentError as exc:
        log.warning("%s; reconnecting", exc)
    except BaseException:  # cancelled (stopped), or a callback's failure ends the watch
        link.connected = False
        await reports.cancel()
        raise
    else:
        log.info("agent %s: the event stream ended; reconnecting", client.endpoint.url)
    link.connected = False
    await _settle(reports)
    return alive


async def _settle(reports: _Reports) -> None:
    """After a connection failed: let the reports in flight finish before the next one
    starts (their failures go with the failed connection); cancel them if cancelled."""
    try:
        await reports.drain()
    except asyncio.CancelledError:
        await reports.cancel()
        raise
    except AgentError as exc:
        log.warning("%s (a report after the connection failed)", exc)


async def _until(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> T | None:
    """`work`'s result, or None if `stop` is set first (then `work` is cancelled)."""
    task = asyncio.create_task(work)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()  # no-op for a task that is done
        stopped.cancel()
        await asyncio.wait((task, stopped))
    return None if task.cancelled() else task.result()
