"""The operator's kopf storages: an Instance's last-handled state read from its conditions
(no annotation written), and no PATCH for progress that is purged at once."""

from __future__ import annotations

from typing import Any

import kopf

from stratus_operator.handlers.lifecycle import (
    LAST_APPLIED,
    HandledGenerationDiffBase,
    QuietProgressStorage,
)

GROUP = "stratus.io"


def storages() -> tuple[HandledGenerationDiffBase, QuietProgressStorage]:
    progress = QuietProgressStorage(prefix=GROUP)
    diffbase = HandledGenerationDiffBase(
        kinds=frozenset({"Instance"}), progress=progress,
        handler_ids=frozenset({"reconcile", "reconcile/spec"}), prefix=GROUP,
        key="last-handled-configuration",
    )  # fmt: skip
    return diffbase, progress


def body(kind: str = "Instance", generation: int = 2, handled: int | None = 2,
         annotations: dict[str, str] | None = None) -> kopf.Body:  # fmt: skip
    raw: dict[str, Any] = {
        "apiVersion": "stratus.io/v1alpha1", "kind": kind,
        "metadata": {"name": "vm", "namespace": "ns", "generation": generation,
                     "annotations": annotations or {}},
        "spec": {"cpu": 1},
        "status": {"conditions": [] if handled is None else [
            {"type": "Ready", "status": "True", "observedGeneration": handled - 1},
            {"type": "Scheduled", "status": "True", "observedGeneration": handled}]},
    }  # fmt: skip
    return kopf.Body(raw)


def test_a_handled_generation_is_no_change_and_a_newer_one_is_a_spec_change() -> None:
    diffbase, _ = storages()
    handled = body()
    assert diffbase.fetch(body=handled) == diffbase.build(body=handled)
    newer = body(generation=3)
    old = diffbase.fetch(body=newer)
    assert old is not None and old["spec"] != diffbase.build(body=newer)["spec"]


def test_nothing_handled_or_a_retry_pending_is_a_create_and_other_kinds_keep_annotations() -> None:
    diffbase, progress = storages()
    assert diffbase.fetch(body=body(handled=None)) is None
    retrying = body(annotations={f"{GROUP}/reconcile": '{"retries":1}'})
    assert progress.fetch(key=kopf.HandlerId("reconcile"), body=retrying) is not None
    assert diffbase.fetch(body=retrying) is None
    network = body(kind="Network")
    assert diffbase.fetch(body=network) is None  # no annotation yet
    patch = kopf.Patch()
    diffbase.store(body=network, patch=patch, essence=diffbase.build(body=network))
    assert f"{GROUP}/last-handled-configuration" in patch["metadata"]["annotations"]
    patch = kopf.Patch()
    instance = body()
    diffbase.store(body=instance, patch=patch, essence=diffbase.build(body=instance))
    assert not patch  # derived from the conditions: nothing to write


def test_progress_purged_at_once_leaves_no_patch_and_kept_progress_keeps_its_marker() -> None:
    _, progress = storages()
    done, instance = kopf.Patch(), body()
    progress.store(key=kopf.HandlerId("reconcile"), record={"success": True}, body=instance,
                   patch=done)  # fmt: skip
    progress.purge(key=kopf.HandlerId("reconcile"), body=instance, patch=done)
    assert not done
    retry = kopf.Patch()
    progress.store(key=kopf.HandlerId("reconcile"), record={"retries": 1}, body=instance,
                   patch=retry)  # fmt: skip
    annotations = retry["metadata"]["annotations"]
    assert f"{GROUP}/reconcile" in annotations and f"{GROUP}/kopf-managed" in annotations


def test_the_essence_is_kopfs_own_without_its_deep_copy() -> None:
    """Our cheap build gives what kopf's generic build (then digested) gives."""
    diffbase, _ = storages()
    for notes in ({}, {"team": "a", LAST_APPLIED: "{}"},
                        {"team": "a", f"{GROUP}/kopf-managed": "yes", f"{GROUP}/reconcile": "{}"},
                        {f"{GROUP}/last-handled-configuration": "{}", "x": "y"}):  # fmt: skip
        raw = dict(body(annotations=notes))
        raw["metadata"] = {**raw["metadata"], "labels": {"app": "web"}, "managedFields": [{}]}
        for extra in (None, {"spec"}):
            ours = diffbase.build(body=kopf.Body(raw), extra_fields=extra)
            kopfs = diffbase._digested(
                kopf.AnnotationsDiffBaseStorage.build(
                    diffbase, body=kopf.Body(raw), extra_fields=extra
                )
            )
            assert ours == kopfs, (annotations, extra)
