"""The few Kubernetes API calls the operator makes besides kopf's own, off the event loop.

kopf watches and patches the objects it handles; this is for the rest: Secrets, status of
objects other than the handled one, and full lists at resync. Status patches, a few per
object, go out on the event loop through aiohttp; the rare rest through the sync
`kubernetes` client in worker threads (a thread hop and its client cost the operator more
CPU than the API server's answer takes).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import ssl
from typing import Any, cast
from urllib.parse import quote

import aiohttp
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

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


def _gone(status: int, body: str) -> bool:
    # 404: deleted. A UID that no longer matches (re-created under the same name) is
    # refused as a precondition or an immutable-field change, depending on the path.
    return status == 404 or (status in (409, 422) and "uid" in body.lower())


class _Http:
    """An aiohttp session to the API server, with the `kubernetes` client's credentials
    (client certificate, or a token re-read through its refresh hook)."""

    def __init__(self, configuration: client.Configuration) -> None:
        self._config = configuration
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        cfg = self._config
        if not cfg.host.startswith("https:"):
            return False
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if not cfg.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif cfg.assert_hostname is False:
            context.check_hostname = False
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
        return context

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # A session belongs to the loop it was made in (tests run several loops).
            self._loop = loop
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=MAX_CONNECTIONS)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def headers(self, content_type: str) -> dict[str, str]:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        token = self._config.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        return headers

    async def patch(self, path: str, body: dict[str, Any]) -> None:
        """Merge-patch `path`; NotFound when the object is gone; KubeError otherwise."""
        data = json.dumps(body, separators=(",", ":")).encode()
        headers = self.headers("application/merge-patch+json")
        kwargs: dict[str, Any] = {}
        if self._config.tls_server_name:
            kwargs["server_hostname"] = self._config.tls_server_name
        url = self._config.host.rstrip("/") + path
        async with self.session().patch(url, data=data, headers=headers, **kwargs) as reply:
            if reply.status < 300:
                await reply.read()
                return
            text = await reply.text(errors="replace")
        if _gone(reply.status, text):
            raise NotFound(path)
        raise KubeError(f"PATCH {path}", reply.status, text)

    async def close(self) -> None:
        if self._session is not None and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None


class Kube:
    def __init__(self, api: client.ApiClient | None = None) -> None:
        if api is None:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
            api = client.ApiClient()
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._http = _Http(api.configuration)

    async def close(self) -> None:
        await self._http.close()

    async def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """A Secret's decoded data, or None when it does not exist."""

        def read() -> dict[str, bytes] | None:
            try:
                secret = self._core.read_namespaced_secret(name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

        return await asyncio.to_thread(read)

    async def post_event(
        self, involved: dict[str, str], type_: str, reason: str, message: str
    ) -> None:
        """Record a core/v1 Event on an object (cluster-scoped ones in `default`), as
        `kubectl describe` and `kubectl get events` show them."""
        namespace = involved.get("namespace") or "default"
        now = datetime.datetime.now(datetime.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{involved['name']}.", namespace=namespace),
            involved_object=client.V1ObjectReference(**involved),
            type=type_,
            reason=reason,
            message=message[:1024],
            source=client.V1EventSource(component="stratus-operator"),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            reporting_component="stratus.io/operator",
            reporting_instance="stratus-operator",
        )
        await asyncio.to_thread(self._core.create_namespaced_event, namespace, event)

    async def list_objects(self, plural: str) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            found = cast(
                dict[str, Any], self._custom.list_cluster_custom_object(GROUP, VERSION, plural)
            )
            return cast(list[dict[str, Any]], found["items"])

        return await asyncio.to_thread(read)

    async def patch_status(
        self, plural: str, namespace: str | None, name: str, body: dict[str, Any]
    ) -> None:
        """Merge-patch the status subresource; NotFound when the object is gone (or was
        re-created: `body` names the UID it is for)."""
        where = f"namespaces/{quote(namespace, safe='')}/" if namespace is not None else ""
        path = f"/apis/{GROUP}/{VERSION}/{where}{plural}/{quote(name, safe='')}/status"
        await self._http.patch(path, body)
