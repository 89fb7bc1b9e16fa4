"""The API server, called with the signed-in user's own token: what the dashboard shows and
does is exactly what their RBAC allows. One session with a bounded pool serves every user;
each request carries its user's token, and TLS verifies the API server with the CA alone.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from stratus_api.v1alpha1 import GROUP, VERSION
from stratus_operator.services.kube import Kube

CORE = "/api/v1"
STRATUS = f"/apis/{GROUP}/{VERSION}"


class ApiError(Exception):
    """The API server refused: its status and the message it gave (which names the field
    of an invalid object)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _message(status: int, text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text[:300] or f"HTTP {status}"
    return str(body.get("message") or f"HTTP {status}")


def path(plural: str, namespace: str | None, name: str = "", prefix: str = STRATUS) -> str:
    where = f"/namespaces/{quote(namespace, safe='')}" if namespace else ""
    return f"{prefix}{where}/{plural}" + (f"/{quote(name, safe='')}" if name else "")


class UserApi:
    def __init__(self, kube: Kube, connections: int = 16) -> None:
        self._kube = kube
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._context: ssl.SSLContext | None = None

    async def _client(self) -> tuple[str, aiohttp.ClientSession]:
        """The session, made again when the operator logged in anew (kopf's re-login brings
        a new TLS context: a CA that changed must reach these calls too)."""
        server, context = self._kube.for_users()
        if self._session is not None and context is not self._context:
            await self._session.close()
            self._session = None
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=context or False, limit=self._connections)
            self._session = aiohttp.ClientSession(connector=connector)
            self._context = context
        return server.rstrip("/"), self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self, token: str, method: str, url_path: str, body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:  # fmt: skip
        server, session = await self._client()
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        timeout = aiohttp.ClientTimeout(total=30)
        async with session.request(method, server + url_path, data=data, headers=headers,
                                   timeout=timeout) as reply:  # fmt: skip
            text = await reply.text(errors="replace")
        if reply.status >= 300:
            raise ApiError(reply.status, _message(reply.status, text))
        found: dict[str, Any] = json.loads(text) if text else {}
        return found

    async def list(self, token: str, plural: str, namespace: str | None, prefix: str = STRATUS,
                   **query: str) -> dict[str, Any]:  # fmt: skip
        where = path(plural, namespace, prefix=prefix)
        return await self.request(token, "GET", where + (f"?{urlencode(query)}" if query else ""))

    async def get(self, token: str, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return await self.request(token, "GET", path(plural, namespace, name))

    async def create(self, token: str, plural: str, namespace: str, body: dict[str, Any]
                     ) -> dict[str, Any]:  # fmt: skip
        return await self.request(token, "POST", path(plural, namespace), body)

    async def delete(self, token: str, plural: str, namespace: str, name: str) -> None:
        await self.request(token, "DELETE", path(plural, namespace, name))

    async def patch(self, token: str, plural: str, namespace: str, name: str,
                    body: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        return await self.request(token, "PATCH", path(plural, namespace, name), body,
                                  "application/merge-patch+json")  # fmt: skip

    async def watch(
        self, token: str, plural: str, namespace: str, resource_version: str,
        prefix: str = STRATUS, timeout_seconds: int = 300, field_selector: str = "",
    ) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
        """The watch events after `resource_version`, until the API server ends the watch."""
        server, session = await self._client()
        query = {"watch": "1", "resourceVersion": resource_version,
                 "timeoutSeconds": str(timeout_seconds)}  # fmt: skip
        if field_selector:
            query["fieldSelector"] = field_selector
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        url = f"{server}{path(plural, namespace, prefix=prefix)}?{urlencode(query)}"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30)
        async with session.get(url, headers=headers, timeout=timeout) as reply:
            if reply.status >= 300:
                raise ApiError(reply.status, _message(reply.status, await reply.text()))
            async for line in reply.content:
                if line.strip():
                    yield json.loads(line)
