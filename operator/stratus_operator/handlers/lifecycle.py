"""Operator-wide settings, applied once at startup."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, cast

import kopf

from stratus_operator.handlers.common import runtime
from stratus_operator.services.settings import FINALIZER, GROUP


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
        essence: dict[str, Any] = dict(super().build(body=body, extra_fields=extra_fields))
        if "spec" in essence:
            essence["spec"] = {"sha256": _digest(essence["spec"])}
        metadata = dict(essence.get("metadata") or {})
        if metadata.get("annotations"):
            metadata["annotations"] = {"sha256": _digest(metadata["annotations"])}
            essence["metadata"] = metadata
        return cast(kopf.BodyEssence, essence)


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = DigestDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Watches reconnect every few minutes anyway; a bounded server timeout keeps them fresh.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


@kopf.on.cleanup()
async def close_agents(memo: kopf.Memo, **_: Any) -> None:
    rt = runtime(memo)
    await rt.agents.close()
    await rt.kube.close()
