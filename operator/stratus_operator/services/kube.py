"""The few Kubernetes API calls the operator makes besides kopf's own, off the event loop.

kopf watches and patches the objects it handles; this is for the rest: Secrets, status of
objects other than the handled one, and full lists at resync. The sync `kubernetes` client
runs in worker threads.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from stratus_api.v1alpha1 import GROUP, VERSION


class NotFound(Exception):
    """The object is not there (any more)."""


def _gone(exc: ApiException) -> bool:
    # 404: deleted. A UID that no longer matches (re-created under the same name) is
    # refused as a precondition or an immutable-field change, depending on the path.
    return exc.status == 404 or "uid" in str(exc.body or "").lower()


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

        def send() -> None:
            try:
                self._patch_status(plural, namespace, name, body)
            except ApiException as exc:
                if exc.status in (404, 409, 422) and _gone(exc):
                    raise NotFound(f"{plural} {namespace}/{name}") from None
                raise

        await asyncio.to_thread(send)

    def _patch_status(
        self, plural: str, namespace: str | None, name: str, body: dict[str, Any]
    ) -> None:
        if namespace is None:
            self._custom.patch_cluster_custom_object_status(GROUP, VERSION, plural, name, body)
        else:
            self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, body
            )
