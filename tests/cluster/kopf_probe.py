"""A minimal kopf operator for test_kopf.py (test-only): proves kopf works on our API.

Run with `kopf run --standalone --namespace NS kopf_probe.py`; PROBE_LOG names the file the
delete handler writes to.
"""

from __future__ import annotations

import os
from typing import Any

import kopf


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "stratus.io/kopf-probe"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="probe.stratus.io"
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="probe.stratus.io", key="last-handled-configuration"
    )


@kopf.on.create("stratus.io", "v1alpha1", "images")
def created(patch: kopf.Patch, meta: kopf.Meta, **_: Any) -> None:
    # The CRD defaults status.observedGeneration to 0; kubectl wait needs it current.
    patch.status["observedGeneration"] = meta.get("generation")
    patch.status["phase"] = "Ready"
    patch.status["conditions"] = [
        {"type": "Ready", "status": "True", "reason": "Probed", "message": "seen by kopf"}
    ]


@kopf.on.delete("stratus.io", "v1alpha1", "images")
def deleted(name: str, meta: kopf.Meta, **_: Any) -> None:
    pending = "deletionTimestamp" in meta
    with open(os.environ["PROBE_LOG"], "a") as log:
        log.write(f"deleted {name} while-pending={pending}\n")
