"""Network handlers: settle the segment and say the Network is ready for NICs."""

from __future__ import annotations

from typing import Any

import kopf

from stratus_api.v1alpha1 import Network
from stratus_operator.handlers.common import NETWORKS, runtime
from stratus_operator.services import networks


@kopf.on.resume(*NETWORKS)
@kopf.on.create(*NETWORKS)
async def settle(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    network = Network.model_validate(dict(body))
    await networks.settle(network, runtime(memo))
