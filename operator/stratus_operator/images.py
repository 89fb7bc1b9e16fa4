"""Images: check that the source answers, and keep the phase. Nodes do the downloading."""

from __future__ import annotations

import aiohttp

from stratus_api.quantity import ByteQuantity
from stratus_api.v1alpha1 import Image
from stratus_api.v1alpha1.image import ImagePhase, ImageStatus
from stratus_operator.controllers import conditions
from stratus_operator.controllers.instance import READY

PROBE_TIMEOUT = aiohttp.ClientTimeout(total=15)


class SourceUnreachable(Exception):
    def __init__(self, status: ImageStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


async def check_source(image: Image) -> ImageStatus:
    """Ready once the source answers a HEAD request; a Failed image stays Failed (nodes
    found it bad, and the source cannot change)."""
    status = image.status or ImageStatus()
    if status.phase is ImagePhase.FAILED:
        return status
    url, generation = image.spec.source.http.url, image.metadata.generation
    try:
        async with (
            aiohttp.ClientSession(timeout=PROBE_TIMEOUT) as session,
            session.head(url, allow_redirects=True) as response,
        ):
            ok, code, length = response.status == 200, response.status, response.content_length
    except (aiohttp.ClientError, TimeoutError) as exc:
        ok, code, length, problem = False, 0, None, f"{type(exc).__name__}: {exc}"
    else:
        problem = f"HEAD answered {code}"
    if not ok:
        message = f"spec.source.http.url: {url} is not reachable ({problem})"
        pending = status.model_copy(
            update={
                "phase": ImagePhase.PENDING,
                "observed_generation": generation,
                "conditions": conditions.set_condition(
                    status.conditions, READY, False, "SourceUnreachable", message, generation
                ),
            }
        )
        raise SourceUnreachable(pending, message)
    return status.model_copy(
        update={
            "phase": ImagePhase.READY,
            "format": image.spec.format or status.format,
            "actual_size": ByteQuantity(length) if length is not None else status.actual_size,
            "observed_generation": generation,
            "conditions": conditions.set_condition(
                status.conditions, READY, True, "SourceReachable",
                "nodes download and verify it on first use", generation,
            ),
        }
    )  # fmt: skip
