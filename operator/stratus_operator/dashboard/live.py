"""Live fragments over Server-Sent Events: a page's changing part (a table's rows, an
object's status and events, the topology) rendered again whenever the objects it shows
change, from watches made with the user's token. Each connection keeps the objects it
shows, from one list and then the watch, so a change costs no further request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from stratus_operator.dashboard.userapi import STRATUS, ApiError, UserApi

log = logging.getLogger(__name__)
PING_SECONDS = 20.0
COALESCE_SECONDS = 0.15  # changes close together go out as one render
WATCH_SECONDS = 60  # watches end this often, so a closed page's watches end soon after


@dataclass(frozen=True)
class Source:
    """A set of objects a fragment shows: a kind in a namespace, maybe field-selected."""

    plural: str
    namespace: str
    prefix: str = STRATUS
    field_selector: str = ""


@dataclass
class Seen:
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # by UID
    forbidden: str = ""  # the API server's message when the user may not list them

    def items(self) -> list[dict[str, Any]]:
        return sorted(self.objects.values(), key=lambda o: o["metadata"].get("name", ""))


Render = Callable[[dict[Source, Seen]], str]


async def snapshot(api: UserApi, token: str, sources: list[Source]) -> dict[Source, Seen]:
    """The objects of each source now (for a page's first render)."""
    seen = {source: Seen() for source in sources}
    for source in sources:
        await _list(api, token, source, seen[source])
    return seen


async def _list(api: UserApi, token: str, source: Source, seen: Seen) -> str:
    """Fill `seen` from a list; the resourceVersion to watch from ("" when refused)."""
    query = {"fieldSelector": source.field_selector} if source.field_selector else {}
    try:
        found = await api.list(token, source.plural, source.namespace, source.prefix, **query)
    except ApiError as exc:
        if exc.status != 403:
            raise
        seen.objects.clear()
        seen.forbidden = exc.message
        return ""
    seen.forbidden = ""
    seen.objects = {o["metadata"]["uid"]: o for o in found.get("items") or []}
    return str(found["metadata"].get("resourceVersion", ""))


async def _follow(api: UserApi, token: str, source: Source, seen: Seen, changed: asyncio.Event,
                  version: str) -> None:  # fmt: skip
    while True:
        if not version:  # refused: nothing to watch; try again later
            await asyncio.sleep(WATCH_SECONDS)
        else:
            try:
                async for event in api.watch(token, source.plural, source.namespace, version,
                                             source.prefix, WATCH_SECONDS,
                                             source.field_selector):  # fmt: skip
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":  # 410 Gone: list again
                        break
                    uid = obj.get("metadata", {}).get("uid")
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event.get("type") == "DELETED":
                        seen.objects.pop(uid, None)
                    elif uid:
                        seen.objects[uid] = obj
                    changed.set()
                    continue
            except ApiError as exc:
                log.debug("dashboard watch of %s refused: %s", source.plural, exc.status)
        version = await _list(api, token, source, seen)
        changed.set()


async def stream(request: web.Request, api: UserApi, token: str, sources: list[Source],
                 render: Render) -> web.StreamResponse:  # fmt: skip
    """Send `render`'s fragment now and after every change, until the page goes away."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store"})  # fmt: skip
    seen = {source: Seen() for source in sources}
    versions = {source: await _list(api, token, source, seen[source]) for source in sources}
    await response.prepare(request)
    changed = asyncio.Event()
    tasks = [asyncio.create_task(_follow(api, token, s, seen[s], changed, versions[s]))
             for s in sources]  # fmt: skip
    try:
        changed.set()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), PING_SECONDS)
            if not changed.is_set():
                await response.write(b": ping\n\n")  # finds a closed page
                continue
            await asyncio.sleep(COALESCE_SECONDS)
            changed.clear()
            data = json.dumps(render(seen))
            await response.write(f"event: fragment\ndata: {data}\n\n".encode())
            if any(t.done() for t in tasks):  # a watch failed for good
                break
    except ConnectionResetError:  # the page went away
        pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return response
