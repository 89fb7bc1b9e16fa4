"""SecurityGroups end to end: tell every node with a NIC in a group the group's rules, with
its remote groups turned into their members' addresses (controllers/security_group.py);
tell nodes that have none any more to forget it; keep its status (NIC and node counts)
true; make a namespace's group `default` when a NIC first needs it; hold a group's deletion
while NICs are in it.

Sent when a node's spec changes (a rule, or a remote group's members) and again every
resync interval, in case a node lost what it was told.
"""

from __future__ import annotations

import logging

from stratus_api.reasons import Reason
from stratus_api.security_group_wire import NodeSecurityGroupSpec
from stratus_api.v1alpha1 import API_VERSION, Instance, SecurityGroup
from stratus_api.v1alpha1.securitygroup import DEFAULT_GROUP, SecurityGroupStatus
from stratus_operator.controllers import security_group as plan
from stratus_operator.controllers.problem import Problem
from stratus_operator.services.memberships import Membership
from stratus_operator.services.node_shares import SECURITY_GROUPS, holds, tell_nodes
from stratus_operator.services.runtime import Runtime
from stratus_operator.services.status import ObjectRef
from stratus_operator.services.world import World, instance_in_group

log = logging.getLogger(__name__)


class SecurityGroupInUse(Exception):
    pass


def membership(
    namespace: str, name: str, world: World, runtime: Runtime, *, whole: bool = False
) -> Membership[tuple[plan.Port, ...]]:
    """The group's NICs, per Instance, kept up to date from the Instances' events."""
    return runtime.memberships.refresh(
        instance_in_group(namespace, name), world,
        lambda: world.security_group_users((namespace, name)),
        lambda instance: tuple(plan.ports_in(name, [instance])) or None, whole=whole,
    )  # fmt: skip


def census(
    group: SecurityGroup, world: World, runtime: Runtime, *, whole: bool = False
) -> plan.Census:
    """How many NICs the group applies to, and where."""
    namespace, name = group.metadata.namespace or "", group.metadata.name or ""
    kept = membership(namespace, name, world, runtime, whole=whole)
    return plan.census(kept.tally("census", plan.port_count))


def node_spec(group: SecurityGroup, world: World, runtime: Runtime) -> NodeSecurityGroupSpec:
    """The group's node spec, built again only when its generation or a remote group's
    members changed (a big default group's daemon would otherwise build every member's
    address every round)."""
    namespace = group.metadata.namespace or ""
    remotes = {r.remote_group.name for r in group.spec.rules if r.remote_group}
    groups = {name: membership(namespace, name, world, runtime) for name in sorted(remotes)}
    key = (group.metadata.generation, tuple((n, m.version) for n, m in groups.items()))
    uid = group.metadata.uid or ""
    built = runtime.security_group_built.get(uid)
    if built is not None and built[0] == key:
        return built[1]
    spec = plan.node_spec(
        group, lambda name: groups[name].tally("addresses", plan.member_addresses).items()
    )
    runtime.security_group_built[uid] = (key, spec)
    return spec


async def publish(group: SecurityGroup, world: World, runtime: Runtime, *, resync: bool) -> None:
    """Tell each node with a port in the group whose spec changed (every one when `resync`),
    have nodes without one forget it, and write status when it changed."""
    uid = group.metadata.uid or ""
    counted = census(group, world, runtime, whole=resync)
    nodes = list(counted.nodes)
    if group.metadata.deletion_timestamp:
        nodes = []
    spec = node_spec(group, world, runtime)
    told = runtime.security_group_nodes.setdefault(uid, {})
    await tell_nodes(
        f"security group {group.metadata.namespace}/{group.metadata.name}", uid,
        dict.fromkeys(nodes, spec), told, world, runtime, SECURITY_GROUPS, resync=resync,
    )  # fmt: skip
    untold = [node for node in nodes if not holds(told, node, spec)]
    if not told:
        runtime.security_group_nodes.pop(uid, None)
    if not group.metadata.deletion_timestamp:
        await _record(group, counted, untold, runtime)


async def _record(
    group: SecurityGroup, counted: plan.Census, untold: list[str], runtime: Runtime
) -> None:
    """Status as it is now, written only when it changed since the last write."""
    problem = plan.remote_problem(group)
    generation = group.metadata.generation or 0
    why = str(problem) if problem else None
    seen = (counted, tuple(untold), why, generation)
    uid = group.metadata.uid or ""
    if runtime.security_group_seen.get(uid) == seen:
        return
    change = plan.refused(counted, problem) if problem else plan.enforced(counted, untold)
    await runtime.status.write(
        ObjectRef.of(group), group.status, generation, change, SecurityGroupStatus
    )
    runtime.security_group_seen[uid] = seen


def in_use(group: SecurityGroup, world: World, runtime: Runtime) -> Problem | None:
    """Why the group cannot go yet: NICs are in it (Neutron refuses to delete a group in
    use; here the deletion waits, as a Network's does)."""
    namespace, name = group.metadata.namespace or "", group.metadata.name or ""
    shares = membership(namespace, name, world, runtime).shares
    if not shares:
        return None
    names = sorted({p.instance for ports in shares.values() for p in ports})
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return Problem(
        Reason.SECURITY_GROUP_IN_USE,
        f"NICs of Instance(s) {shown} are in the group; it is deleted once none is",
        waiting=True,
    )


async def remove(group: SecurityGroup, world: World, runtime: Runtime) -> None:
    """Forget the group on every node told it; SecurityGroupInUse while NICs are in it."""
    problem = in_use(group, world, runtime)
    if problem is not None:
        await runtime.status.write(
            ObjectRef.of(group), group.status, group.metadata.generation or 0,
            plan.refused(census(group, world, runtime), problem), SecurityGroupStatus,
        )  # fmt: skip
        raise SecurityGroupInUse(str(problem))
    await publish(group, world, runtime, resync=False)  # deleting: every node forgets it
    uid = group.metadata.uid or ""
    left = runtime.security_group_nodes.get(uid)
    if left:
        raise SecurityGroupInUse(f"node(s) {', '.join(sorted(left))} not told to forget it yet")
    runtime.security_group_seen.pop(uid, None)
    runtime.security_group_built.pop(uid, None)
    runtime.memberships.drop(
        instance_in_group(group.metadata.namespace or "", group.metadata.name or "")
    )


async def ensure_default(instance: Instance, world: World, runtime: Runtime) -> None:
    """Make the namespace's group `default` when a NIC of `instance` is in it and it does
    not exist (a user may have edited it: an existing one is left as it is)."""
    namespace = instance.metadata.namespace or ""
    needs = any(DEFAULT_GROUP in plan.groups_of(a) for a in instance.spec.networks)
    if world.security_group((namespace, DEFAULT_GROUP)) is not None:
        runtime.default_groups_made.discard(namespace)  # made again if deleted later
        return
    if not needs:
        return
    if namespace in runtime.default_groups_made:
        return  # made already; the watch has not brought it yet
    body = {
        "apiVersion": API_VERSION, "kind": SecurityGroup.crd.kind,
        "metadata": {"name": DEFAULT_GROUP, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "stratus-operator"}},
        "spec": plan.default_spec().to_wire(),
    }  # fmt: skip
    # Marked before the request: the NICs of a burst that come while it is on the way do
    # not each make it again (each a 409).
    runtime.default_groups_made.add(namespace)
    try:
        made = await runtime.kube.create(SecurityGroup.crd.plural, namespace, body)
    except BaseException:
        runtime.default_groups_made.discard(namespace)
        raise
    if made:
        log.info("namespace %s: made the security group %s", namespace, DEFAULT_GROUP)
