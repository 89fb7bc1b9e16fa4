"""The enrollment endpoint agent pods join the cluster through (HTTPS, beside the operator).

An agent pod POSTs a CSR with its projected ServiceAccount token. The operator has the API
server review the token (controllers/enrollment.py decides), then, for that node only:
signs the CSR with the CA it keeps in a Secret, keeps the node's bearer token in a Secret of
its own (made once, so a restarted agent gets the same one), and makes or repoints the
node's Hypervisor. The agent trusts this endpoint through the CA's certificate, which the
operator publishes in a ConfigMap the kubelet mounts for it. Every replica serves it, the
standby too: it needs no leadership, only the API server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from stratus_api.enrollment_wire import (
    ENROLLMENT_AUDIENCE,
    ENROLLMENT_PATH,
    MAX_CSR_BYTES,
    EnrollmentGrant,
    EnrollmentRequest,
)
from stratus_api.validation import problems_of
from stratus_operator.controllers import authority as ca
from stratus_operator.controllers.enrollment import (
    ENROLLED_LABEL,
    Refused,
    enrollee,
    hypervisor_body,
    hypervisor_change,
    reviewed_node,
)
from stratus_operator.services import tls
from stratus_operator.services.kube import Kube, KubeError, NotLoggedIn
from stratus_operator.services.settings import EnrollmentSettings

log = logging.getLogger(__name__)
CA_CERT_KEY = "ca.crt"
CORE = ""  # the core API group: Secrets, ConfigMaps, Nodes


def _secret(name: str, namespace: str, data: dict[str, str], owner: list[Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": {ENROLLED_LABEL: "true"},
                     "ownerReferences": owner},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }  # fmt: skip


def _decoded(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode((secret.get("data") or {}).get(key, "")).decode()


class Enrollment:
    def __init__(self, kube: Kube, settings: EnrollmentSettings) -> None:
        self._kube = kube
        self._settings = settings
        self._authority: ca.Authority | None = None

    async def _owner(self) -> list[dict[str, Any]]:
        """The agents' DaemonSet as the owner of what enrollment makes, when it exists."""
        name = self._settings.agent_daemonset
        if not name:
            return []
        found = await self._kube.read("daemonsets", self._settings.namespace, name,
                                      group="apps", version="v1")  # fmt: skip
        if found is None:
            return []
        return [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": name,
                 "uid": found["metadata"]["uid"]}]  # fmt: skip

    async def authority(self) -> ca.Authority:
        """The CA from its Secret, made on first use (another replica may make it at the same
        time: the first create wins, the other reads it); its certificate published in the
        ConfigMap of the same name."""
        if self._authority is not None:
            return self._authority
        s = self._settings
        found = await self._kube.read("secrets", s.namespace, s.ca_name, group=CORE)
        if found is None:
            made = ca.new_authority(f"stratus enrollment CA ({s.namespace})")
            body = _secret(s.ca_name, s.namespace,
                           {"tls.crt": made.certificate_pem, "tls.key": made.key_pem},
                           await self._owner())  # fmt: skip
            await self._kube.create("secrets", s.namespace, body, group=CORE)
            found = await self._kube.read("secrets", s.namespace, s.ca_name, group=CORE)
            if found is None:
                raise KubeError(f"Secret {s.namespace}/{s.ca_name}", 404, "gone after create")
        authority = ca.Authority(_decoded(found, "tls.crt"), _decoded(found, "tls.key"))
        await self._publish(authority.certificate_pem, found["metadata"].get("ownerReferences"))
        self._authority = authority
        return authority

    async def _publish(self, certificate: str, owner: list[Any] | None) -> None:
        s = self._settings
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": s.ca_name, "namespace": s.namespace,
                             "labels": {ENROLLED_LABEL: "true"}, "ownerReferences": owner or []},
                "data": {CA_CERT_KEY: certificate}}  # fmt: skip
        if not await self._kube.create("configmaps", s.namespace, body, group=CORE):
            await self._kube.merge_patch(
                "configmaps", s.namespace, s.ca_name, {"data": body["data"]}, group=CORE
            )

    async def enroll(self, token: str, request: EnrollmentRequest) -> EnrollmentGrant:
        s = self._settings
        review = await self._kube.token_review(token, [ENROLLMENT_AUDIENCE])
        name = reviewed_node(review, s.agent_service_account)
        node = enrollee(await self._kube.read("nodes", None, name, group=CORE), name)
        authority = await self.authority()
        try:
            certificate = ca.sign_request(authority, request.csr, name, dns_names=(name,),
                                          ips=(node.address,))  # fmt: skip
        except ca.BadRequest as exc:
            raise Refused(422, str(exc)) from None
        secret = (s.namespace, s.secret_prefix + name)
        token_for_node = await self._node_token(secret, authority.certificate_pem)
        endpoint = node.endpoint(request.port)
        await self._hypervisor(hypervisor_body(node, endpoint, secret))
        log.info("enrolled node %s as Hypervisor %s at %s", name, name, endpoint)
        return EnrollmentGrant(hypervisor=name, endpoint=endpoint, certificate=certificate,
                               ca=authority.certificate_pem, token=token_for_node)  # fmt: skip

    async def _node_token(self, secret: tuple[str, str], ca_pem: str) -> str:
        """The node's bearer token: the one its Secret holds, else a new one."""
        namespace, name = secret
        found = await self._kube.read("secrets", namespace, name, group=CORE)
        if found is not None and _decoded(found, "token"):
            if _decoded(found, CA_CERT_KEY) != ca_pem:
                patch = {"data": {CA_CERT_KEY: base64.b64encode(ca_pem.encode()).decode()}}
                await self._kube.merge_patch("secrets", namespace, name, patch, group=CORE)
            return _decoded(found, "token")
        token = secrets.token_urlsafe(self._settings.token_bytes)
        body = _secret(name, namespace, {"token": token, CA_CERT_KEY: ca_pem}, await self._owner())
        if not await self._kube.create("secrets", namespace, body, group=CORE):
            # A second enrollment of the node raced this one: its token stands.
            again = await self._kube.read("secrets", namespace, name, group=CORE)
            return _decoded(again or {}, "token") or token
        return token

    async def _hypervisor(self, body: dict[str, Any]) -> None:
        """Make the node's Hypervisor, or point the one enrollment made before at its agent."""
        name = body["metadata"]["name"]
        if await self._kube.create("hypervisors", None, body):
            return
        found = await self._kube.read("hypervisors", None, name)
        if found is None:  # deleted since: once more
            await self._kube.create("hypervisors", None, body)
            return
        change = hypervisor_change(found, body["spec"])
        if change is not None:
            await self._kube.merge_patch("hypervisors", None, name, change)


async def forget_enrolled(kube: Kube, grace_seconds: float, poll_seconds: float = 1.0) -> list[str]:
    """Delete the Hypervisors enrollment made (a chart's pre-delete hook: Helm leaves objects
    it did not make). The operator, still running, lets each go; those still there after
    `grace_seconds` lose their finalizers, as no operator is left to remove them."""
    selector = f"{ENROLLED_LABEL}=true"
    names = [h["metadata"]["name"] for h in await kube.list_objects("hypervisors", None, selector)]
    for name in names:
        await kube.delete("hypervisors", None, name)
    deadline = asyncio.get_running_loop().time() + grace_seconds
    while left := await kube.list_objects("hypervisors", None, selector):
        if asyncio.get_running_loop().time() > deadline:
            for found in left:
                await kube.merge_patch("hypervisors", None, found["metadata"]["name"],
                                       {"metadata": {"finalizers": None}})  # fmt: skip
            deadline = float("inf")  # once; deletion then completes on its own
        await asyncio.sleep(poll_seconds)
    return names


def app(enrollment: Enrollment) -> web.Application:
    async def enroll(request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "send the pod's projected ServiceAccount token as a Bearer token")
        try:
            wanted = EnrollmentRequest.model_validate_json(await request.read())
        except ValidationError as exc:
            return _error(422, "; ".join(str(p) for p in problems_of(exc)))
        try:
            grant = await enrollment.enroll(token.strip(), wanted)
        except Refused as exc:
            log.warning("enrollment refused (%s): %s", exc.status, exc)
            return _error(exc.status, str(exc))
        except (KubeError, NotLoggedIn, OSError) as exc:
            log.warning("enrollment failed on the API server: %s", exc)
            return _error(503, "the API server did not answer the enrollment; retry")
        return web.json_response(grant.model_dump(by_alias=True))

    application = web.Application(client_max_size=MAX_CSR_BYTES + 4096)
    application.router.add_post(ENROLLMENT_PATH, enroll)
    return application


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


@contextlib.asynccontextmanager
async def serving(kube: Kube, settings: EnrollmentSettings) -> AsyncIterator[Enrollment | None]:
    """The endpoint, served for the duration; nothing when enrollment is off."""
    if not settings.enabled:
        yield None
        return
    enrollment = Enrollment(kube, settings)
    names = tls.service_names(settings.service, settings.namespace)
    context = tls.serving_context(await enrollment.authority(), names)
    runner = web.AppRunner(app(enrollment), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port, ssl_context=context).start()
    log.info("enrollment endpoint on %s:%d", settings.host, settings.port)
    try:
        yield enrollment
    finally:
        await runner.cleanup()
