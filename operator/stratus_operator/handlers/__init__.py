"""kopf handlers, one small module per kind: parse the body, call plain code, map errors.

Importing this package registers every handler with kopf.
"""

from stratus_operator.handlers import (
    cephpool,
    floatingip,
    hypervisor,
    image,
    indexes,
    instance,
    lifecycle,
    network,
    router,
    securitygroup,
    volume,
    volumesnapshot,
    wakeups,
)

__all__ = [
    "cephpool",
    "floatingip",
    "hypervisor",
    "image",
    "indexes",
    "instance",
    "lifecycle",
    "network",
    "router",
    "securitygroup",
    "volume",
    "volumesnapshot",
    "wakeups",
]
