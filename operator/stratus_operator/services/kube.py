"""The few Kubernetes API calls the operator makes besides kopf's own.

kopf watches and patches the objects it handles; this is for the rest: Secrets, status of
objects other than the handled one, and Events. They go out on the event loop through one
aiohttp session, with the credentials kopf logged in with (handlers/lifecycle.py hands them
over on every login, so a re-read service-account token reaches these calls too). No
`kubernetes` client: it would cost the operator a quarter of its memory for three calls.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from stratus_api.v1alpha1 import GROUP, VERSION

# Status patches in flight at once (one connection each).
MAX_CONNECTIONS = 32


class NotFound(Exception):
    """The object is not there (any more)."""


class KubeError(Exception):
    """The API server refused a request."""

    def __init__(self, what: str, status: int, body: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class NotLoggedIn(RuntimeError):
    """A call before kopf's login handed over the credentials."""


def _gone(status: int, body: str) -> bool:
    # 404: deleted. A UID that no longer matches (re-created under the same name) is
    # refused as a precondition or an immutable-field change, depending on the path.
    return status == 404 or (status in (409, 422) and "uid" in body.lower())


def _path(plural: str, namespace: str | None, name: str = "", group: str = GROUP) -> str:
    prefix = f"/apis/{group}/{VERSION}" if group else "/api/v1"
    where = f"/namespaces/{quote(namespace, safe='')}" if namespace is not None else ""
    return f"{prefix}{where}/{plural}" + (f"/{quote(name, safe='')}" if name else "")


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to talk to it (from kopf's ConnectionInfo)."""

    server: str
    ssl: ssl.SSLContext | None
    headers: dict[str, str]


class Kube:
    def __init__(self) -> None:
        self._info: Credentials | None = None
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def use(self, info: Credentials) -> None:
        """Credentials from kopf's login; later calls use them (the session is remade)."""
        await self.close()
        self._info = info

    def _open(self) -> tuple[Credentials, aiohttp.ClientSession]:
        info = self._info
        if info is None:
            raise NotLoggedIn("the operator has not logged in to the API server yet")
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # A session belongs to the loop it was made in (tests run several loops).
            self._loop = loop
            connector = aiohttp.TCPConnector(ssl=info.ssl or False, limit=MAX_CONNECTIONS)
            self._session = aiohttp.ClientSession(connector=connector, headers=info.headers)
        return info, self._session

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> str:  # fmt: skip
        """The answer's text; NotFound when the object is gone; KubeError otherwise."""
        info, session = self._open()
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        url = info.server.rstrip("/") + path
        async with session.request(method, url, data=data, headers=headers) as reply:
            text = await reply.text(errors="replace")
        if reply.status < 300:
            return text
        if _gone(reply.status, text):
            raise NotFound(path)
        raise KubeError(f"{method} {path}", reply.status, text)

    async def close(self) -> None:
        if self._session is not None and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None

    async def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """A Secret's decoded data, or None when it does not exist."""
        try:
            text = await self._request("GET", _path("secrets", namespace, name, group=""))
        except NotFound:
            return None
        data = json.loads(text).get("data") or {}
        return {k: base64.b64decode(v) for k, v in data.items()}

    async def post_event(
        self, involved: dict[str, str], type_: str, reason: str, message: str
    ) -> None:
        """Record a core/v1 Event on an object (cluster-scoped ones in `default`), as
        `kubectl describe` and `kubectl get events` show them."""
        namespace = involved.get("namespace") or "default"
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
            "involvedObject": involved, "type": type_, "reason": reason,
            "message": message[:1024], "source": {"component": "stratus-operator"},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": "stratus.io/operator", "reportingInstance": "stratus-operator",
        }  # fmt: skip
        await self._request("POST", _path("events", namespace, group=""), event)

    async def patch_status(
        self, plural: str, namespace: str | None, name: str, body: dict[str, Any]
    ) -> None:
        """Merge-patch the status subresource; NotFound when the object is gone (or was
        re-created: `body` names the UID it is for)."""
        path = _path(plural, namespace, name) + "/status"
        await self._request("PATCH", path, body, "application/merge-patch+json")
