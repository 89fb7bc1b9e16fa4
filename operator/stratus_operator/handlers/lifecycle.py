"""Operator-wide settings and credentials, applied at startup and login."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any, cast

import kopf

from stratus_api.v1alpha1 import Instance
from stratus_operator.handlers.common import WATCHED_KINDS, every_object, runtime
from stratus_operator.services.kube import Credentials
from stratus_operator.services.settings import FINALIZER, GROUP

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled state with the spec and the user's annotations as digests.

    kopf keeps a copy of what it last handled in an annotation; a spec near its size limits
    (64 KiB of user-data, SSH keys) would push that annotation past the API server's 256 KiB
    for all annotations, and then no patch (not even removing the finalizer) succeeds. A
    digest changes whenever the spec does, which is all `on.update(field="spec")` needs.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        """kopf's essence (the spec, labels and the annotations that are not kopf's or
        kubectl's), built without kopf's deep copy of the whole body, status and
        managedFields included, on every watch event (a tenth of the operator's CPU in
        bench/control_plane.py, by py-spy). Extra fields other than the spec (none of our
        handlers asks) take kopf's way."""
        if any(field not in ("spec", ("spec",)) for field in extra_fields or ()):
            return self._digested(super().build(body=body, extra_fields=extra_fields))
        skipped = ("apiVersion", "kind", "metadata", "status")
        essence: dict[str, Any] = {k: v for k, v in body.items() if k not in skipped}
        meta = body.get("metadata") or {}
        metadata: dict[str, Any] = {}
        if meta.get("labels"):
            metadata["labels"] = dict(meta["labels"])
        annotations = dict(meta.get("annotations") or {})
        ignored = {f"{prefix}/" for prefix in self._detect_marked_prefixes(annotations)}
        for key in list(annotations):
            if key == LAST_APPLIED or any(key.startswith(prefix) for prefix in ignored):
                del annotations[key]
        for key in self.make_keys(self.key, body=body):
            annotations.pop(key, None)
        if annotations:
            metadata["annotations"] = annotations
        if metadata:
            essence["metadata"] = metadata
        return self._digested(cast(kopf.BodyEssence, essence))

    @staticmethod
    def _digested(built: kopf.BodyEssence) -> kopf.BodyEssence:
        essence: dict[str, Any] = dict(built)
        if "spec" in essence:
            essence["spec"] = {"sha256": _digest(essence["spec"])}
        metadata = dict(essence.get("metadata") or {})
        if metadata.get("annotations"):
            metadata["annotations"] = {"sha256": _digest(metadata["annotations"])}
            essence["metadata"] = metadata
        return cast(kopf.BodyEssence, essence)


class QuietProgressStorage(kopf.AnnotationsProgressStorage):
    """kopf's progress records in annotations, without a PATCH when there is no progress
    to keep. kopf stores each handler's outcome and purges it in the same cycle when all
    succeeded, but the "kopf-managed" marker it adds on storing stays in the patch: one
    PATCH per create holding nothing else. Here the marker goes with the records it marks:
    kept in a patch that keeps some (a retry), dropped from one that keeps none."""

    def purge(self, *, key: kopf.HandlerId, body: kopf.Body, patch: kopf.Patch) -> None:
        super().purge(key=key, body=body, patch=patch)
        annotations = patch.get("metadata", {}).get("annotations", {})
        marker = f"{self.prefix}/kopf-managed"
        if marker not in annotations or marker in body.metadata.annotations:
            return
        if not any(k.startswith(f"{self.prefix}/") and k != marker for k in annotations):
            del annotations[marker]
            if not annotations:
                del patch["metadata"]["annotations"]
            if not patch["metadata"]:
                del patch["metadata"]


class HandledGenerationDiffBase(DigestDiffBaseStorage):
    """For kinds whose change handlers always end by writing conditions at the generation
    they handled (Instances: a success sets Scheduled, a failure Ready/Reconciling/Stalled),
    the last-handled state is read from those conditions instead of kept in an annotation:
    one write fewer per create and per spec change, on the hot path.

    Handled (a condition at the current generation, no retry pending): no change. A newer
    generation: the spec changed. A retry pending in kopf's progress records: nothing
    handled (a create cause, which runs the same reconcile). Never handled by this version:
    the annotation, as for every other kind (absent: a create).
    """

    def __init__(
        self,
        *,
        kinds: frozenset[str],
        progress: kopf.ProgressStorage,
        handler_ids: frozenset[str],
        prefix: str,
        key: str,
    ) -> None:
        super().__init__(prefix=prefix, key=key)
        self.kinds, self.progress, self.handler_ids = kinds, progress, handler_ids

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        if body.get("kind") not in self.kinds:
            return super().fetch(body=body)
        found = [c.get("observedGeneration") for c in (body.get("status") or {}).get(
            "conditions") or [] if isinstance(c, dict)]  # fmt: skip
        handled = max((g for g in found if isinstance(g, int)), default=None)
        if handled is None:
            return super().fetch(body=body)
        if any(self.progress.fetch(key=kopf.HandlerId(h), body=body) for h in self.handler_ids):
            return None
        current: dict[str, Any] = dict(self.build(body=body))
        if handled < ((body.get("metadata") or {}).get("generation") or 0):
            current["spec"] = {"sha256": "not handled yet"}
        return cast(kopf.BodyEssence, current)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        if body.get("kind") not in self.kinds:
            super().store(body=body, patch=patch, essence=essence)


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    progress = QuietProgressStorage(prefix=GROUP)
    settings.persistence.progress_storage = progress
    settings.persistence.diffbase_storage = HandledGenerationDiffBase(
        kinds=frozenset({Instance.crd.kind}),
        progress=progress,
        handler_ids=frozenset({"reconcile", "reconcile/spec"}),  # handlers/instance.py
        prefix=GROUP,
        key="last-handled-configuration",
    )
    watch = runtime(memo).settings.watch
    settings.watching.server_timeout = watch.server_timeout_seconds
    settings.watching.client_timeout = watch.client_timeout_seconds
    settings.queueing.idle_timeout = watch.worker_idle_seconds


@kopf.on.startup()
def measure_objects(memo: kopf.Memo, **kwargs: Any) -> None:
    """The metrics read the objects from kopf's indexes, which startup handlers get too."""
    rt = runtime(memo)
    rt.metrics.state.objects = lambda: every_object(kwargs)

    def placed(node: str) -> tuple[int, int] | None:
        used = rt.placements.used(node)
        return (used.cpu, used.memory_bytes) if rt.seeded else None

    rt.metrics.state.placed = placed


@kopf.on.login()
async def login(memo: kopf.Memo, **kwargs: Any) -> kopf.AiohttpSession:
    """kopf's own logins, in-cluster first, without the `kubernetes` client, into one
    session with a bounded pool that kopf and the operator's own calls (services/kube.py)
    share; made again at every re-login."""
    info = connection_info(**kwargs)
    rt = runtime(memo)
    secure = info.server.startswith("https:")
    ssl = info.as_ssl_context() if secure else None
    # For calls made with a user's token (the dashboard): the CA only, never the operator's
    # client certificate, which the API server would take over the user's token.
    bare = dataclasses.replace(info, certificate_path=None, certificate_data=None,
                               private_key_path=None, private_key_data=None)  # fmt: skip
    user_ssl = bare.as_ssl_context() if secure else None
    api = rt.settings.api
    # kopf holds one connection per watch for as long as it runs: those come on top.
    watches = WATCHED_KINDS * max(1, len(rt.settings.namespaces))
    session = rt.kube.connect(
        Credentials(info.server, ssl, info.as_http_headers(), user_ssl),
        api.connections + watches,
    )
    return kopf.AiohttpSession(
        aiohttp_session=session, server=info.server, default_namespace=info.default_namespace,
        priority=info.priority,
    )  # fmt: skip


def connection_info(**kwargs: Any) -> kopf.ConnectionInfo:
    """Where the API server is and the credentials for it: the pod's service account
    first, else KUBECONFIG or ~/.kube/config."""
    info = kopf.login_with_service_account(**kwargs)
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT")
    if info is not None and host and port:
        # The address the kubelet gives every pod, as client-go uses: it needs no cluster
        # DNS, which kopf's default (kubernetes.default.svc) does.
        info = dataclasses.replace(info, server=f"https://{_host(host)}:{port}")
    info = info or kopf.login_with_kubeconfig(**kwargs)
    if info is None:
        raise kopf.LoginError(
            "no credentials: not in a pod with a service account, and no KUBECONFIG or "
            "~/.kube/config"
        )
    return info


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@kopf.on.cleanup()
async def close_agents(memo: kopf.Memo, **_: Any) -> None:
    rt = runtime(memo)
    await rt.agents.close()
    await rt.kube.close()
