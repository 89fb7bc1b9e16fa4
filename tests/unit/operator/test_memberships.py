"""A Network's or group's members kept from the Instances' events, not scanned each round."""

from __future__ import annotations

from stratus_api.v1alpha1 import Instance
from stratus_operator.services.memberships import Memberships
from stratus_operator.services.world import World
from testsupport import placed_instance

KEY = ("network", "team-a", "blue")


class Cluster:
    """The Instances index as the World reads it, with a count of the lookups made."""

    def __init__(self, *found: Instance) -> None:
        self.by_uid = {i.metadata.uid or "": i for i in found}
        self.lookups = 0

    def instance(self, uid: str) -> Instance | None:
        self.lookups += 1
        return self.by_uid.get(uid)

    def world(self) -> World:
        return World(
            hypervisors=lambda: (), instances=self.by_uid.values,
            hypervisor=lambda _: None, instance_type=lambda _: None, image=lambda _: None,
            network=lambda _: None, instance=self.instance, instances_on=lambda _: (),
            has_instance=lambda uid: uid in self.by_uid,
        )  # fmt: skip


def node_of(instance: Instance) -> str | None:
    if instance.metadata.deletion_timestamp or instance.status is None:
        return None
    return instance.status.node or "-"


def test_after_the_first_build_only_instances_with_events_are_looked_at_again() -> None:
    cluster = Cluster(placed_instance("a", "n1"), placed_instance("b", None))
    kept, world = Memberships(), cluster.world()
    users = lambda: list(cluster.by_uid)  # noqa: E731
    first = kept.refresh(KEY, world, users, node_of)
    assert first.shares == {"uid-a": "n1", "uid-b": "-"}
    version, cluster.lookups = first.version, 0

    again = kept.refresh(KEY, world, users, node_of)  # no event: nothing looked at
    assert (again.version, cluster.lookups) == (version, 0)

    cluster.by_uid["uid-b"] = placed_instance("b", "n2")
    cluster.by_uid["uid-c"] = placed_instance("c", "n1")
    kept.changed("uid-b", [KEY])
    kept.changed("uid-c", [KEY])
    kept.changed("uid-x", [("network", "ns", "other")])  # another key's event
    after = kept.refresh(KEY, world, users, node_of)
    assert after.shares == {"uid-a": "n1", "uid-b": "n2", "uid-c": "n1"}
    assert after.version > version and cluster.lookups == 2


def test_instances_leave_when_deleted_gone_or_moved_to_another_key() -> None:
    cluster = Cluster(*(placed_instance(name, "n1") for name in "abc"))
    kept, world = Memberships(), cluster.world()
    for uid in cluster.by_uid:
        kept.changed(uid, [KEY])
    users = lambda: list(cluster.by_uid)  # noqa: E731
    kept.refresh(KEY, world, users, node_of)
    cluster.by_uid["uid-a"] = placed_instance("a", "n1", deleting=True)
    kept.changed("uid-a", [KEY])
    del cluster.by_uid["uid-b"]
    kept.forget("uid-b")
    kept.changed("uid-c", [("network", "ns", "green")])  # its NIC moved: the old key hears
    cluster.by_uid["uid-c"] = placed_instance("c", None, deleting=True)
    assert kept.refresh(KEY, world, users, node_of).shares == {}


class Recorded:
    """A tally that records what it is told."""

    def __init__(self) -> None:
        self.told: list[str] = []

    def add(self, share: str) -> None:
        self.told.append(f"+{share}")

    def remove(self, share: str) -> None:
        self.told.append(f"-{share}")


def test_tallies_follow_each_changed_share_and_are_made_again_after_a_whole_rebuild() -> None:
    cluster = Cluster(placed_instance("a", "n1"), placed_instance("b", "n1"))
    kept, world = Memberships(), cluster.world()
    users = lambda: list(cluster.by_uid)  # noqa: E731
    tally = kept.refresh(KEY, world, users, node_of).tally("nodes", Recorded)
    assert tally.told == ["+n1", "+n1"]  # made from every share
    cluster.by_uid["uid-b"] = placed_instance("b", "n2")  # moved
    cluster.by_uid["uid-c"] = placed_instance("c", "n3")  # came
    kept.changed("uid-b", [KEY])
    kept.changed("uid-c", [KEY])
    again = kept.refresh(KEY, world, users, node_of).tally("nodes", Recorded)
    assert again is tally
    assert sorted(tally.told[2:]) == ["+n2", "+n3", "-n1"]  # only what changed
    del cluster.by_uid["uid-a"]  # gone without an event: only a whole rebuild sees it
    rebuilt = kept.refresh(KEY, world, users, node_of, whole=True).tally("nodes", Recorded)
    assert rebuilt is not tally and sorted(rebuilt.told) == ["+n2", "+n3"]


def test_a_whole_rebuild_finds_instances_whose_events_were_missed() -> None:
    cluster = Cluster(placed_instance("a", "n1"))
    kept, world = Memberships(), cluster.world()
    users = lambda: list(cluster.by_uid)  # noqa: E731
    kept.refresh(KEY, world, users, node_of)
    del cluster.by_uid["uid-a"]  # deleted before it had a finalizer: no event seen
    assert kept.refresh(KEY, world, users, node_of).shares == {"uid-a": "n1"}
    assert kept.refresh(KEY, world, users, node_of, whole=True).shares == {}
