"""SecurityGroups as plain data: which NICs each group applies to, its rules as a node
enforces them (remote groups turned into their members' addresses) and the status that says
so. Pure: the caller looks up the Instances.

A NIC is in the groups its spec.networks[].securityGroups names, or in its namespace's group
`default` when it names none; the group need not exist for the NIC to be in it (a node lets
nothing through for a group it holds no rules of). A group's members are the addresses of
its NICs, as Neutron's remote groups are its ports' fixed IPs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stratus_api.reasons import Reason
from stratus_api.security_group_wire import NodeRule, NodeSecurityGroupSpec, group_key
from stratus_api.v1alpha1 import Instance, SecurityGroup
from stratus_api.v1alpha1.instance import NetworkAttachment
from stratus_api.v1alpha1.securitygroup import (
    DEFAULT_GROUP,
    RemoteGroup,
    SecurityGroupRule,
    SecurityGroupSpec,
    SecurityGroupStatus,
)
from stratus_operator.controllers import conditions
from stratus_operator.controllers.problem import Problem, failing
from stratus_operator.controllers.tallies import Counted, SortedBag

ANYWHERE = "0.0.0.0/0"


def groups_of(attachment: NetworkAttachment) -> list[str]:
    """The names of the groups a NIC is in."""
    return list(attachment.security_groups or [DEFAULT_GROUP])


def nic_group_keys(instance: Instance, attachment: NetworkAttachment) -> list[str]:
    """The NIC's groups as a node names them ("namespace/name")."""
    namespace = instance.metadata.namespace or ""
    return [group_key(namespace, name) for name in groups_of(attachment)]


@dataclass(frozen=True)
class Port:
    """A NIC in a group, where it is."""

    instance: str
    network: str
    address: str | None
    node: str | None


def ports_in(name: str, instances: Iterable[Instance]) -> list[Port]:
    """The NICs of `instances` (of the group's namespace) in group `name`, sorted."""
    found = []
    for instance in instances:
        if instance.metadata.deletion_timestamp:
            continue
        status = instance.status
        addresses = {i.network: i.ip for i in status.interfaces} if status else {}
        for attachment in instance.spec.networks:
            if name in groups_of(attachment):
                found.append(Port(
                    instance=instance.metadata.name or "", network=attachment.name,
                    address=addresses.get(attachment.name), node=status.node if status else None,
                ))  # fmt: skip
    return sorted(found, key=lambda p: (p.instance, p.network))


def member_addresses() -> SortedBag[tuple[Port, ...], str]:
    """A remote group's addresses, as /32s (a NIC without an address yet adds none), kept
    from its members' ports share by share."""
    return SortedBag(_addresses, str)


def _addresses(ports: tuple[Port, ...]) -> list[str]:
    return [f"{p.address}/32" for p in ports if p.address and ":" not in p.address]


def remote_problem(group: SecurityGroup) -> Problem | None:
    """A rule naming a remote group of another namespace: groups are a namespace's own
    business, and its members' addresses are not another tenant's to read."""
    namespace = group.metadata.namespace or ""
    for index, rule in enumerate(group.spec.rules):
        remote = rule.remote_group
        if remote is not None and remote.namespace not in (None, namespace):
            return Problem(
                Reason.GROUP_IN_OTHER_NAMESPACE,
                f"spec.rules[{index}].remoteGroup.namespace: group {remote.namespace}/"
                f"{remote.name} is in another namespace; a rule may name groups of its own "
                f"namespace ({namespace}) only",
            )
    return None


def node_spec(
    group: SecurityGroup, members_of: Callable[[str], list[str]]
) -> NodeSecurityGroupSpec:
    """The group as nodes enforce it; `members_of(name)`: the addresses of the group `name`
    of the same namespace. A rule remote_problem refuses lets nothing through."""
    rules = []
    for rule in group.spec.rules:
        port_min = rule.port
        port_max = rule.end_port or rule.port
        # Not validated again: built from a valid group and addresses, and a big group's
        # members are thousands of addresses.
        rules.append(NodeRule.model_construct(
            direction=rule.direction, protocol=rule.protocol, port_min=port_min,
            port_max=port_max, remotes=_remotes(rule, group.metadata.namespace or "", members_of),
        ))  # fmt: skip
    return NodeSecurityGroupSpec(
        uid=group.metadata.uid or "", namespace=group.metadata.namespace or "",
        name=group.metadata.name or "", rules=rules,
    )  # fmt: skip


def _remotes(
    rule: SecurityGroupRule, namespace: str, members_of: Callable[[str], list[str]]
) -> list[str]:
    if rule.remote_group is not None:
        if rule.remote_group.namespace not in (None, namespace):
            return []  # refused (remote_problem): the rule lets nothing through
        return members_of(rule.remote_group.name)
    return [rule.remote_cidr or ANYWHERE]


def default_spec() -> SecurityGroupSpec:
    """The group `default` as the operator makes it: ingress from its own members only,
    egress anywhere (Neutron's default group, IPv4)."""
    return SecurityGroupSpec(
        description="Made by Stratus for NICs that name no group: ingress from this group's "
        "members only, egress anywhere. Edit it as any other group.",
        rules=[
            SecurityGroupRule(direction="ingress", remote_group=RemoteGroup(name=DEFAULT_GROUP)),
            SecurityGroupRule(direction="egress"),
        ],
    )


GroupChange = Callable[[SecurityGroupStatus, int], SecurityGroupStatus]


@dataclass(frozen=True)
class Census:
    """How many NICs a group applies to, and on which nodes: what its status says and
    where it is sent."""

    ports: int
    nodes: tuple[str, ...]


def port_count() -> Counted[tuple[Port, ...]]:
    """A group's ports and their nodes, counted share by share (census() reads it)."""
    return Counted(_nodes)


def _nodes(ports: tuple[Port, ...]) -> list[str | None]:
    return [p.node for p in ports]


def census(counted: Counted[tuple[Port, ...]]) -> Census:
    return Census(counted.count, counted.groups())


def enforced(counted: Census, untold: list[str]) -> GroupChange:
    """The status of a group told to the nodes of its ports, but `untold` (nodes that did
    not answer: tried again)."""

    def change(status: SecurityGroupStatus, generation: int) -> SecurityGroupStatus:
        if untold:
            ready, reason = False, Reason.NODES_NOT_TOLD
            message = f"not told yet to node(s) {', '.join(untold)} (tried again)"
        else:
            ready, reason = True, Reason.ENFORCED
            message = f"applies to {counted.ports} NIC(s) on {len(counted.nodes)} node(s)"
        return status.model_copy(update={
            "port_count": counted.ports,
            "node_count": len(counted.nodes),
            "observed_generation": generation,
            "conditions": conditions.with_progress(
                status.conditions, ready=ready, reason=reason, message=message,
                generation=generation, reconciling=bool(untold),
            ),
        })  # fmt: skip

    return change


def refused(counted: Census, problem: Problem) -> GroupChange:
    fail: GroupChange = failing(problem)

    def change(status: SecurityGroupStatus, generation: int) -> SecurityGroupStatus:
        update = {"port_count": counted.ports, "node_count": len(counted.nodes)}
        return fail(status.model_copy(update=update), generation)

    return change
