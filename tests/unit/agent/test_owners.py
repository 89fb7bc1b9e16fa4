"""Per-guest QEMU users: allocation from the range, recovery from defined domains."""

from __future__ import annotations

import uuid

import pytest

from stratus_agent.base import GuestOwner
from stratus_agent.errors import ProvisioningError
from stratus_agent.manager.owners import GuestOwners


def uid() -> str:
    return str(uuid.uuid4())


def test_each_guest_gets_its_own_user_and_keeps_it() -> None:
    owners = GuestOwners(first=5000, count=10)
    a, b = uid(), uid()
    assert owners.owner(a) == GuestOwner(uid=5000, gid=5000)  # its own group too
    assert owners.owner(b) == GuestOwner(uid=5001, gid=5001)
    assert owners.owner(a) == GuestOwner(uid=5000, gid=5000)


def test_a_shared_group_when_configured() -> None:
    owners = GuestOwners(first=5000, count=10, gid=108)
    assert owners.owner(uid()) == GuestOwner(uid=5000, gid=108)


def test_a_released_user_is_given_out_again() -> None:
    owners = GuestOwners(first=5000, count=2)
    a, b, c = uid(), uid(), uid()
    owners.owner(a)
    owners.owner(b)
    with pytest.raises(ProvisioningError, match="all 2 guest UIDs from 5000 are in use") as err:
        owners.owner(c)
    assert err.value.transient  # a delete elsewhere frees one: worth retrying
    owners.release(a)
    assert owners.owner(c) == GuestOwner(uid=5000, gid=5000)


def test_users_of_defined_domains_are_adopted_and_never_given_twice() -> None:
    owners = GuestOwners(first=5000, count=10)
    running, other_range, duplicate = uid(), uid(), uid()
    owners.adopt(
        {
            running: GuestOwner(uid=5000, gid=5000),
            other_range: GuestOwner(uid=64055, gid=64055),  # e.g. libvirt-qemu, or old range
        }
    )
    owners.adopt({duplicate: GuestOwner(uid=5000, gid=5000)})
    assert owners.known() == {running: GuestOwner(uid=5000, gid=5000)}
    assert owners.owner(running) == GuestOwner(uid=5000, gid=5000)
    assert owners.owner(duplicate) == GuestOwner(uid=5001, gid=5001)
    assert owners.owner(other_range) == GuestOwner(uid=5002, gid=5002)
