"""Lifecycle verbs on a real node: power Paused (virDomainSuspend/Resume) and restarts asked
for by a new restart token (destroy + start: a new QEMU process, so a new domain ID).

The same manager logic runs against the fake driver in tests/unit/agent/test_manager.py;
here libvirt's own view (virsh domstate, domid) and the guest's console tell what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from testsupport import AGENT_AUTH

if TYPE_CHECKING:
    from conftest import AgentUnderTest, Node

SpecFactory = Callable[..., dict[str, Any]]
# Seconds for libvirt's lifecycle events of a restart to reach the manager; a stop event
# taken for a crash would be acted on (and counted) well within it.
SETTLE = 3.0


async def wait_for_token(agent: AgentUnderTest, uid: str, token: str) -> dict[str, Any]:
    for _ in range(600):
        status = await agent.get(uid)
        if status is not None and status["restartToken"] == token:
            return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"restart token {token} never acted on\n{agent.diagnostics(uid)}")


@contextlib.asynccontextmanager
async def states_streamed(agent: AgentUnderTest, uid: str) -> AsyncIterator[list[str]]:
    """The states the event stream reports for `uid` while the block runs (what the
    operator sees)."""
    seen: list[str] = []
    response = await agent.client.get("/v1/events", headers=AGENT_AUTH)
    assert response.status == 200

    async def read() -> None:
        async for line in response.content:
            event = json.loads(line)
            if event["type"] == "guest" and event["guest"]["uid"] == uid:
                seen.append(event["guest"]["state"])

    reader = asyncio.create_task(read())
    try:
        yield seen
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        response.close()


async def test_a_paused_guest_reports_paused_and_resumes(
    agent: AgentUnderTest, make_guest_spec: SpecFactory, libvirt_node: Node
) -> None:
    spec = make_guest_spec(name="vm-pause", power="Paused")
    uid = spec["uid"]
    await agent.put(spec)
    await agent.wait_for_state(uid, "Paused", generation=1)
    assert libvirt_node.domain_state(uid) == "paused"
    paused_id = libvirt_node.domain_id(uid)
    listed = {g["uid"]: g["state"] for g in (await agent.inventory())["guests"]}
    assert listed[uid] == "Paused"

    running = {**spec, "generation": 2, "power": "Running"}
    await agent.put(running)
    await agent.wait_for_state(uid, "Running", generation=2)
    assert libvirt_node.domain_state(uid) == "running"
    assert libvirt_node.domain_id(uid) == paused_id  # resumed, not started again
    markers = await agent.wait_for_marker(uid, "ready")
    assert markers.count("booted") == 1

    # Paused again, then Stopped straight from Paused.
    await agent.put({**running, "generation": 3, "power": "Paused"})
    await agent.wait_for_state(uid, "Paused", generation=3)
    await agent.put({**running, "generation": 4, "power": "Stopped"})
    await agent.wait_for_state(uid, "Stopped", generation=4, timeout=120.0)
    assert libvirt_node.domain_state(uid) == "shut off"
    status = await agent.get(uid)
    assert status is not None and status["restarts"] == 0


async def test_a_new_restart_token_restarts_the_guest_once(
    agent: AgentUnderTest, make_guest_spec: SpecFactory, libvirt_node: Node
) -> None:
    spec = make_guest_spec(name="vm-token", restartToken="first")
    uid = spec["uid"]
    await agent.put(spec)
    await agent.wait_for_state(uid, "Running", generation=1)
    await agent.wait_for_marker(uid, "ready")
    first_id = libvirt_node.domain_id(uid)
    # The first spec a guest gets only adopts its token.
    assert (await wait_for_token(agent, uid, "first"))["restarts"] == 0
    assert libvirt_node.domain_id(uid) == first_id

    restart = {**spec, "generation": 2, "restartToken": "second"}
    async with states_streamed(agent, uid) as seen:
        await agent.put(restart)
        await wait_for_token(agent, uid, "second")
        await agent.wait_for_state(uid, "Running", generation=2)
        await asyncio.sleep(SETTLE)
    # The stop half of the restart is the agent's own: never reported as Stopped (which
    # the operator would show, and runStrategy Always would take for a crash).
    assert "Stopped" not in seen and "Crashed" not in seen, seen
    second_id = libvirt_node.domain_id(uid)
    assert second_id != first_id  # a new QEMU process
    markers = await agent.wait_for_marker(uid, "ready")
    assert markers.count("booted") == 1  # the console log starts over with the new boot

    # The same spec again, and a spec with other changes but the same token: no restart.
    await agent.put(restart)
    await agent.put({**restart, "generation": 3})
    await agent.wait_for_state(uid, "Running", generation=3)
    await asyncio.sleep(SETTLE)
    status = await agent.get(uid)
    assert status is not None
    # Asked for, so not counted as a crash (runStrategy Always would have counted one).
    assert (status["state"], status["restarts"], status["restartToken"]) == (
        "Running",
        0,
        "second",
    )
    assert libvirt_node.domain_id(uid) == second_id


async def test_a_token_acted_on_is_not_acted_on_again_after_an_agent_restart(
    start_agent: Callable[[], Any], make_guest_spec: SpecFactory, libvirt_node: Node
) -> None:
    spec = make_guest_spec(name="vm-token-restart", restartToken="a")
    uid = spec["uid"]
    first: AgentUnderTest = await start_agent()
    await first.put(spec)
    await first.wait_for_state(uid, "Running", generation=1)
    restart = {**spec, "generation": 2, "restartToken": "b"}
    await first.put(restart)
    await wait_for_token(first, uid, "b")
    await first.wait_for_state(uid, "Running", generation=2)
    domain_id = libvirt_node.domain_id(uid)
    await first.stop()

    second: AgentUnderTest = await start_agent()  # same state directory: same records
    await second.put(restart)  # the operator resyncs with the spec it had sent
    await second.wait_for_state(uid, "Running", generation=2)
    await asyncio.sleep(SETTLE)
    assert libvirt_node.domain_id(uid) == domain_id
    status = await second.get(uid)
    assert status is not None and (status["restartToken"], status["restarts"]) == ("b", 0)
