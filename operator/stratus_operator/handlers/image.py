"""Image handlers: check the source when an Image appears or the operator restarts."""

from __future__ import annotations

from typing import Any

import kopf

from stratus_api.v1alpha1 import Image
from stratus_operator import images
from stratus_operator.handlers.common import IMAGES

SOURCE_RETRY_SECONDS = 30.0


@kopf.on.resume(*IMAGES)
@kopf.on.create(*IMAGES)
async def check_source(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    image = Image.model_validate(dict(body))
    try:
        status = await images.check_source(image)
    except images.SourceUnreachable as exc:
        patch.status.update(exc.status.to_wire())
        raise kopf.TemporaryError(str(exc), delay=SOURCE_RETRY_SECONDS) from None
    patch.status.update(status.to_wire())
