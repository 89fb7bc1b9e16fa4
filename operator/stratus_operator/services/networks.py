"""Networks: the segment id and the Ready condition."""

from __future__ import annotations

import hashlib

from stratus_api.reasons import Reason
from stratus_api.v1alpha1 import Network
from stratus_api.v1alpha1.network import VLAN_MAX, VNI_MAX, NetworkStatus, NetworkType
from stratus_operator.controllers import conditions
from stratus_operator.controllers.instance import READY
from stratus_operator.services.runtime import Runtime
from stratus_operator.services.status import ObjectRef


def segment_for(network: Network) -> int | None:
    """The spec's segment, or one derived from the UID (stable across restarts).

    Derived ids can collide; a full allocator comes with multi-node networking.
    """
    if network.spec.segmentation_id is not None or network.spec.type is NetworkType.FLAT:
        return network.spec.segmentation_id
    space = VLAN_MAX if network.spec.type is NetworkType.VLAN else VNI_MAX
    digest = int.from_bytes(hashlib.sha256((network.metadata.uid or "").encode()).digest()[:4])
    return 1 + digest % space


def settled_status(network: Network) -> NetworkStatus:
    status = network.status or NetworkStatus()
    generation = network.metadata.generation
    return status.model_copy(
        update={
            "segmentation_id": segment_for(network),
            "observed_generation": generation,
            "conditions": conditions.set_condition(
                status.conditions, READY, True, Reason.READY, "instances can attach", generation
            ),
        }
    )


async def settle(network: Network, runtime: Runtime) -> None:
    ref = ObjectRef.of(network)
    settled = settled_status(network)
    await runtime.status.write(
        ref,
        network.status,
        network.metadata.generation or 0,
        lambda _current, _gen: settled,
        NetworkStatus,
    )
