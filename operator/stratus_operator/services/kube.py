"""The few Kubernetes API calls the operator makes besides kopf's own.

kopf watches and patches the objects it handles; this is for the rest: Secrets, status of
objects other than the handled one, and Events. They go out on the event loop through the
session kopf uses too, made at each login with the credentials kopf found (so a re-read
service-account token reaches these calls too). No `kubernetes` client: it would cost the
operator a quarter of its memory for three calls.
"""

from __future__ import annotations

import base64
import datetime
import json
import ssl
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any
from urllib.parse import quote

import aiohttp

from stratus_api.v1alpha1 import GROUP, VERSION


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def _path(
    plural: str, namespace: str | None, name: str = "", group: str = GROUP, version: str = VERSION
) -> str:
    prefix = f"/apis/{group}/{version}" if group else "/api/v1"
    where = f"/namespaces/{quote(namespace, safe='')}" if namespace is not None else ""
    return f"{prefix}{where}/{plural}" + (f"/{quote(name, safe='')}" if name else "")


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to talk to it (from kopf's ConnectionInfo)."""

    server: str
    ssl: ssl.SSLContext | None
    headers: dict[str, str]
    # Verifies the API server without presenting the operator's client certificate: for
    # requests made with a user's own token.
    user_ssl: SSLContext | None = None


class Kube:
    """One aiohttp session to the API server, which kopf uses too (handlers/lifecycle.py
    hands it over at login): one bounded pool of kept-alive connections for the whole
    operator. kopf's own session has no bound, and a burst of new objects opened a TLS
    connection per concurrent request, each a handshake for the API server and buffers
    here."""

    def __init__(self, trace: aiohttp.TraceConfig | None = None) -> None:
        """`trace`: told of every request made through this session (the metrics)."""
        self._info: Credentials | None = None
        self._session: aiohttp.ClientSession | None = None
        self._traces = [trace] if trace is not None else None

    def connect(self, info: Credentials, connections: int) -> aiohttp.ClientSession:
        """A new session with these credentials, for kopf and these calls, with at most
        `connections` connections. kopf closes the old one when it drops its credentials."""
        self._info = info
        connector = aiohttp.TCPConnector(ssl=info.ssl or False, limit=connections)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=info.headers, trace_configs=self._traces
        )
        return self._session

    def for_users(self) -> tuple[str, ssl.SSLContext | None]:
        """The API server's address, and the TLS context for calls with a user's token."""
        info, _ = self._open()
        return info.server, info.user_ssl

    def _open(self) -> tuple[Credentials, aiohttp.ClientSession]:
        if self._info is None or self._session is None or self._session.closed:
            raise NotLoggedIn("the operator is not logged in to the API server (yet)")
        return self._info, self._session

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
        if self._session is not None:
            await self._session.close()
        self._session = None

    async def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """A Secret's decoded data, or None when it does not exist."""
        secret = await self.read("secrets", namespace, name, group="")
        if secret is None:
            return None
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}

    async def post_event(
        self, involved: dict[str, str], type_: str, reason: str, message: str
    ) -> str:
        """Record a core/v1 Event on an object (cluster-scoped ones in `default`), as
        `kubectl describe` and `kubectl get events` show them; the Event's name."""
        namespace = involved.get("namespace") or "default"
        now = _now()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
            "involvedObject": involved, "type": type_, "reason": reason,
            "message": message[:1024], "source": {"component": "stratus-operator"},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": "stratus.io/operator", "reportingInstance": "stratus-operator",
        }  # fmt: skip
        made = json.loads(await self._request("POST", _path("events", namespace, group=""), event))
        return str(made["metadata"]["name"])

    async def bump_event(self, involved: dict[str, str], name: str, count: int) -> None:
        """The Event `name` happened again: its count and lastTimestamp."""
        namespace = involved.get("namespace") or "default"
        await self.merge_patch("events", namespace, name, {"count": count, "lastTimestamp": _now()},
                               group="")  # fmt: skip

    async def patch_status(
        self, plural: str, namespace: str | None, name: str, body: dict[str, Any]
    ) -> str | None:
        """Merge-patch the status subresource and return the resourceVersion it made;
        NotFound when the object is gone (or was re-created: `body` names its UID)."""
        path = _path(plural, namespace, name) + "/status"
        text = await self._request("PATCH", path, body, "application/merge-patch+json")
        version = (json.loads(text).get("metadata") or {}).get("resourceVersion")
        return version if isinstance(version, str) else None

    async def create(
        self, plural: str, namespace: str | None, body: dict[str, Any],
        group: str = GROUP, version: str = VERSION,
    ) -> bool:  # fmt: skip
        """Create an object (a Stratus one by default); False if one of that name exists
        already (409)."""
        try:
            await self._request("POST", _path(plural, namespace, group=group, version=version),
                                body)  # fmt: skip
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def read(
        self, plural: str, namespace: str | None, name: str,
        group: str = GROUP, version: str = VERSION,
    ) -> dict[str, Any] | None:  # fmt: skip
        """An object (a Stratus one by default), or None when there is none."""
        try:
            text = await self._request("GET", _path(plural, namespace, name, group, version))
        except NotFound:
            return None
        found: dict[str, Any] = json.loads(text)
        return found

    async def list_objects(
        self, plural: str, namespace: str | None, label_selector: str = "",
        group: str = GROUP, version: str = VERSION, field_selector: str = "",
    ) -> list[dict[str, Any]]:  # fmt: skip
        """The objects of a kind (a Stratus one by default) matching the selectors."""
        selectors = {"labelSelector": label_selector, "fieldSelector": field_selector}
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in selectors.items() if v)
        path = _path(plural, namespace, group=group, version=version) + (
            f"?{query}" if query else ""
        )
        items: list[dict[str, Any]] = json.loads(await self._request("GET", path))["items"]
        return items

    async def delete(
        self, plural: str, namespace: str | None, name: str,
        group: str = GROUP, version: str = VERSION,
    ) -> bool:  # fmt: skip
        """Delete an object; False when it was not there."""
        try:
            await self._request("DELETE", _path(plural, namespace, name, group, version))
        except NotFound:
            return False
        return True

    async def merge_patch(
        self, plural: str, namespace: str | None, name: str, body: dict[str, Any],
        group: str = GROUP, version: str = VERSION,
    ) -> None:  # fmt: skip
        path = _path(plural, namespace, name, group, version)
        await self._request("PATCH", path, body, "application/merge-patch+json")

    async def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """The API server's verdict on a bearer token (authentication.k8s.io TokenReview):
        its `status` (authenticated, user, audiences, error)."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                  "spec": {"token": token, "audiences": audiences}}  # fmt: skip
        path = _path("tokenreviews", None, group="authentication.k8s.io", version="v1")
        status: dict[str, Any] = (
            json.loads(await self._request("POST", path, review)).get("status") or {}
        )
        return status

    async def access_review(self, spec: dict[str, Any]) -> bool:
        """Whether the API server allows what a SubjectAccessReview's `spec` asks (its user
        and resource or non-resource attributes)."""
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                  "spec": spec}  # fmt: skip
        path = _path("subjectaccessreviews", None, group="authorization.k8s.io", version="v1")
        status = json.loads(await self._request("POST", path, review)).get("status") or {}
        return bool(status.get("allowed"))

    async def lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A coordination.k8s.io Lease, or None when there is none."""
        return await self.read("leases", namespace, name, "coordination.k8s.io", "v1")

    async def write_lease(
        self, namespace: str, lease: dict[str, Any], *, create: bool = False
    ) -> bool:
        """Create or replace a Lease (its resourceVersion guards the replace); False when
        another writer got there first (409)."""
        name = "" if create else lease["metadata"]["name"]
        path = _path("leases", namespace, name, group="coordination.k8s.io", version="v1")
        try:
            await self._request("POST" if create else "PUT", path, lease)
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        return True
