"""CephPool: where `ceph` Volumes live, cluster-wide (a Cinder RBD backend's configuration).

The cephx key stays in a Secret the operator reads; it reaches a node only inside the specs
that need it (over the agent's TLS channel, masked everywhere else), never in status, logs
or events.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from stratus_api.quantity import ByteQuantity
from stratus_api.v1alpha1.base import (
    ApiModel,
    Condition,
    FieldError,
    PrinterColumn,
    Resource,
    immutable,
    immutable_message,
    list_map,
)

RESOURCE_NAME_MAX = 253
MAX_MONITORS = 16
# host:port, the host a DNS name, an IPv4 address or a bracketed IPv6 address.
MONITOR_PATTERN = r"^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$"
Monitor = Annotated[str, StringConstraints(max_length=261, pattern=MONITOR_PATTERN)]
# Ceph pool and user names: letters, digits and . _ -
CEPH_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
# The CephPool a ceph Volume goes to when it names none.
DEFAULT_POOL = "default"


class KeySecretRef(ApiModel):
    """A Secret key holding the cephx key (the base64 text of `ceph auth get-key`)."""

    namespace: str = Field(min_length=1, max_length=63, description="Secret namespace.")
    name: str = Field(min_length=1, max_length=RESOURCE_NAME_MAX, description="Secret name.")
    key: str = Field(default="key", min_length=1, max_length=253, description="Key.")


class CephPoolSpec(ApiModel):
    """Monitors, pool and credentials of one Ceph pool."""

    monitors: list[Monitor] = Field(
        min_length=1,
        max_length=MAX_MONITORS,
        description="Monitor addresses, host:port each (msgr2 port 3300 or a custom one).",
    )
    pool: str = Field(
        min_length=1,
        max_length=100,
        pattern=CEPH_NAME_PATTERN,
        description="The RBD pool's name. Immutable: its Volumes live there.",
        json_schema_extra=immutable("pool"),
    )
    user: str = Field(
        min_length=1,
        max_length=100,
        pattern=CEPH_NAME_PATTERN,
        description="The cephx user, without the 'client.' prefix; it needs the caps "
        "`mon 'profile rbd' osd 'profile rbd pool=POOL'`.",
    )
    key_secret_ref: KeySecretRef = Field(
        description="The Secret holding the user's cephx key. Only the operator reads it."
    )


class CephPoolStatus(ApiModel):
    """Whether the pool can be used, and how full it is."""

    capacity: ByteQuantity | None = Field(
        default=None, description="The cluster's raw capacity, as a node last read it (0 from a "
        "cluster without a manager, which is what reports it).",
    )  # fmt: skip
    provisioned: ByteQuantity | None = Field(
        default=None, description="Virtual size of the pool's Volumes and snapshots."
    )
    free: ByteQuantity | None = Field(
        default=None, description="What the cluster can still store (shared with its other pools)."
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current state: Ready says whether Volumes can be made in the pool.",
        json_schema_extra=list_map("type"),
    )


class CephPool(
    Resource,
    plural="cephpools",
    scope="Cluster",
    short_names=("cpool",),
    printer_columns=(
        PrinterColumn("Pool", ".spec.pool"),
        PrinterColumn("User", ".spec.user"),
        PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status'),
        PrinterColumn("Provisioned", ".status.provisioned"),
        PrinterColumn("Free", ".status.free"),
    ),
):
    """A Ceph RBD pool for `ceph` Volumes; a Volume names it in spec.cephPool (default:
    the CephPool named "default")."""

    kind: Literal["CephPool"] = "CephPool"
    spec: CephPoolSpec = Field(description="Monitors, pool and credentials.")
    status: CephPoolStatus | None = Field(default=None, description="Whether it can be used.")

    def refused_changes(self, old: CephPool) -> list[FieldError]:
        """The twin of the transition rule."""
        if self.spec.pool != old.spec.pool:
            return [FieldError("spec.pool", immutable_message("pool"))]
        return []
