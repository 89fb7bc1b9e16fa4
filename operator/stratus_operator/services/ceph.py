"""Ceph pools: what a node needs to reach the pool of a `ceph` Volume, and whether a CephPool
can be used.

The cephx key is read from the CephPool's Secret when a spec needs it and goes only into
that spec (masked: SecretStr), never into status, conditions, events or logs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import SecretStr

from stratus_api.quantity import ByteQuantity
from stratus_api.reasons import Reason
from stratus_api.v1alpha1 import CephPool, Volume
from stratus_api.v1alpha1.cephpool import DEFAULT_POOL, CephPoolStatus
from stratus_api.volume_wire import CephAccess, PoolUsage
from stratus_operator.controllers import conditions
from stratus_operator.controllers.volume import VolumeProblem
from stratus_operator.services.agent_client import AgentError
from stratus_operator.services.runtime import AgentNotConfigured, Runtime
from stratus_operator.services.status import ObjectRef
from stratus_operator.services.world import World

log = logging.getLogger(__name__)

FIELD = "spec.cephPool"  # of a Volume
KEY_FIELD = "spec.keySecretRef"  # of a CephPool


def pool_of(volume: Volume, world: World) -> CephPool:
    name = volume.spec.ceph_pool or DEFAULT_POOL
    pool = world.ceph_pool(name)
    if pool is None:
        unset = "" if volume.spec.ceph_pool else " (unset: the one named 'default')"
        raise VolumeProblem(
            Reason.CEPH_POOL_NOT_FOUND, f"{FIELD}: CephPool {name}{unset} not found",
            field=FIELD,
        )  # fmt: skip
    return pool


async def key_of(pool: CephPool, runtime: Runtime, field: str) -> str:
    """The pool's cephx key from its Secret; VolumeProblem on `field`, naming the Secret
    (never the key), when it is missing."""
    ref = pool.spec.key_secret_ref
    data = await runtime.kube.secret_data(ref.namespace, ref.name)
    key = (data or {}).get(ref.key, b"").decode(errors="replace").strip()
    if not key:
        where = f"Secret {ref.namespace}/{ref.name}"
        what = f"{where} has no key {ref.key}" if data is not None else f"{where} not found"
        owner = f"CephPool {pool.metadata.name}: " if field != KEY_FIELD else ""
        raise VolumeProblem(Reason.CEPH_KEY_NOT_FOUND, f"{field}: {owner}{what}", field=field)
    return key


async def access(volume: Volume, world: World, runtime: Runtime) -> CephAccess:
    """How a node reaches the Volume's pool, key included."""
    pool = pool_of(volume, world)
    assert pool.metadata.uid
    return CephAccess(
        pool_uid=pool.metadata.uid, monitors=list(pool.spec.monitors), pool=pool.spec.pool,
        user=pool.spec.user, key=SecretStr(await key_of(pool, runtime, FIELD)),
    )  # fmt: skip


CephPoolChange = Callable[[CephPoolStatus, int], CephPoolStatus]


async def check(pool: CephPool, runtime: Runtime) -> CephPoolChange:
    """Ready once its key can be read; VolumeProblem (retried) while not."""
    await key_of(pool, runtime, KEY_FIELD)

    def ready(status: CephPoolStatus, generation: int) -> CephPoolStatus:
        return status.model_copy(
            update={
                "observed_generation": generation,
                "conditions": conditions.with_progress(
                    status.conditions, ready=True, reason=Reason.CEPH_POOL_READY,
                    message=f"pool {pool.spec.pool} as client.{pool.spec.user}",
                    generation=generation,
                ),
            }
        )  # fmt: skip

    return ready


def not_ready(problem: VolumeProblem) -> CephPoolChange:
    def change(status: CephPoolStatus, generation: int) -> CephPoolStatus:
        return status.model_copy(
            update={
                "observed_generation": generation,
                "conditions": conditions.with_progress(
                    status.conditions, ready=False, reason=problem.reason, message=str(problem),
                    generation=generation, reconciling=True,
                ),
            }
        )  # fmt: skip

    return change


async def report_usage(usage: PoolUsage, node: str, world: World, runtime: Runtime) -> None:
    """A node's figures of a pool onto its CephPool's status (every node serving the pool
    reads the same cluster, so whichever reported last is as good as any)."""
    pool = world.ceph_pool_by_uid(usage.pool_uid or "")
    if pool is None or pool.metadata.deletion_timestamp:
        return

    def figures(status: CephPoolStatus, _generation: int) -> CephPoolStatus:
        return status.model_copy(
            update={
                "capacity": ByteQuantity(usage.capacity_bytes),
                "provisioned": ByteQuantity(usage.used_bytes),
                "free": ByteQuantity(usage.free_bytes),
            }
        )

    log.debug("CephPool %s: usage from node %s", pool.metadata.name, node)
    await runtime.status.write(
        ObjectRef.of(pool), pool.status, pool.metadata.generation or 0, figures, CephPoolStatus
    )


class PoolInUse(Exception):
    """A CephPool's deletion waits while Volumes are in its pool."""

    def __init__(self, volumes: list[str]) -> None:
        more = f" and {len(volumes) - 10} more" if len(volumes) > 10 else ""
        shown = ", ".join(volumes[:10]) + more
        super().__init__(
            f"deletion waits: Volume {shown} is in the pool (delete the Volumes first; their "
            "data would be unreachable without the CephPool)"
        )
        self.reason = Reason.CEPH_POOL_IN_USE


async def remove(pool: CephPool, world: World, runtime: Runtime) -> None:
    """Delete the CephPool once no Volume is in it: every Ready node forgets it (its key
    leaves the node's files and the hypervisor's secrets). A node that does not answer
    now keeps them until it is cleaned by hand; that is logged."""
    volumes = sorted(world.pool_volumes(pool.metadata.name or ""))
    if volumes:
        raise PoolInUse(volumes)
    uid = pool.metadata.uid or ""
    for hypervisor in world.hypervisors():
        node = hypervisor.metadata.name
        try:
            client = await runtime.agents.client(hypervisor)
            if await client.forget_ceph_pool(uid):
                log.info("CephPool %s: node %s forgot it", pool.metadata.name, node)
        except (AgentError, AgentNotConfigured) as exc:
            log.warning("CephPool %s: node %s did not forget it (its key may stay in its "
                        "state directory and libvirt secrets): %s", pool.metadata.name, node,
                        exc)  # fmt: skip


def deleting(problem: PoolInUse) -> CephPoolChange:
    def change(status: CephPoolStatus, generation: int) -> CephPoolStatus:
        return status.model_copy(
            update={
                "conditions": conditions.with_progress(
                    status.conditions, ready=False, reason=problem.reason,
                    message=str(problem), generation=generation, reconciling=True,
                ),
            }
        )  # fmt: skip

    return change
