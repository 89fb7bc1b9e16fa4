"""Agents sharing one libvirtd (simulated nodes, two local clouds on one machine, both with
a node of the same name) each see only their own guests: every domain is stamped with the
agent that defined it (its state directory), and an agent lists only domains stamped with
itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import AgentUnderTest, Node


async def test_agents_on_one_libvirtd_list_only_their_own_guests(
    start_agent: Callable[..., Awaitable[AgentUnderTest]],
    make_guest_spec: Callable[..., dict[str, Any]],
    libvirt_node: Node,
) -> None:
    first = await start_agent()
    # Another cloud's agent: same node name, its own state directory.
    second = await start_agent(state_dir=libvirt_node.root / "another-agent")
    spec = {**make_guest_spec(name="owned"), "power": "Stopped"}  # defined, not started
    await first.put(spec)
    await first.wait_for_state(spec["uid"], "Stopped")

    listed = {g["uid"] for g in (await first.inventory())["guests"]}
    assert spec["uid"] in listed
    assert spec["uid"] not in {g["uid"] for g in (await second.inventory())["guests"]}
    assert await second.get(spec["uid"]) is None
    xml = libvirt_node.domain_xml(spec["uid"])
    assert f'agent="{libvirt_node.state_dir.resolve()}"' in xml
    assert await first.delete(spec["uid"]) == {"deleted": True}
