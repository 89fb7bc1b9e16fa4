"""The operator's agent client against the real agent app on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
import pytest

from stratus_api.guest import GuestEvent, GuestSpec, GuestState
from stratus_operator.services import agent_client
from stratus_operator.services.agent_client import (
    AgentClient,
    AgentEndpoint,
    AgentError,
    AgentRejected,
    AgentUnauthorized,
    AgentUnavailable,
    GuestNotFound,
)
from testsupport import AGENT_TOKEN, guest_spec

if TYPE_CHECKING:
    from conftest import RunningAgent, StartAgent

EndpointOf = Callable[..., AgentEndpoint]


def spec(**overrides: object) -> GuestSpec:
    return GuestSpec.model_validate(guest_spec(**overrides))


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Poll `check` until it holds; fail after 5 s."""
    try:
        async with asyncio.timeout(5):
            while True:
                result = check()
                if result if isinstance(result, bool) else await result:
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


class Recorder:
    """The callbacks of watch_events, writing one log both can be checked against."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self._changed = asyncio.Condition()
        self.fail_connects = 0

    async def _note(self, entry: str) -> None:
        async with self._changed:
            self.log.append(entry)
            self._changed.notify_all()

    async def on_connect(self) -> None:
        await self._note("connect")
        if self.fail_connects:
            self.fail_connects -= 1
            raise AgentUnavailable("http://x", "GET /v1/guests", "inventory failed")

    async def on_event(self, event: GuestEvent) -> None:
        assert event.type == "guest" and event.guest is not None
        await self._note(f"{event.guest.uid}:{event.guest.state}")

    async def wait_for(self, predicate: Callable[[list[str]], bool], what: str) -> None:
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self.log)), 5)
        except TimeoutError:
            raise AssertionError(f"never happened: {what}; log: {self.log}") from None


# Requests


async def test_healthz(client: AgentClient) -> None:
    assert await client.healthz() == {"ok": True, "node": "node-1", "virtType": "fake"}


async def test_ensure_get_inventory_delete(client: AgentClient, agent: RunningAgent) -> None:
    wanted = spec()
    first = await client.ensure(wanted)
    assert first.uid == wanted.uid
    assert first.state in (GuestState.PROVISIONING, GuestState.RUNNING)

    async def running() -> bool:
        status = await client.get(wanted.uid)
        return status is not None and status.state is GuestState.RUNNING

    await eventually(running, "guest running")
    again = await client.ensure(wanted)
    assert (again.state, again.generation) == (GuestState.RUNNING, 1)
    assert len(await agent.compute.list()) == 1

    inventory = await client.inventory()
    assert (inventory.node, inventory.virt_type, inventory.cpu) == ("node-1", "fake", 8)
    assert [status.uid for status in inventory.guests] == [wanted.uid]

    assert await client.get(str(uuid.uuid4())) is None
    assert await client.delete(wanted.uid) is True
    assert await client.get(wanted.uid) is None
    assert await client.delete(wanted.uid) is False


async def test_wrong_token_is_unauthorized(agent: RunningAgent, endpoint_of: EndpointOf) -> None:
    async with AgentClient(endpoint_of(agent, token="wrong-token-s3cret")) as client:
        with pytest.raises(AgentUnauthorized) as caught:
            await client.inventory()
    assert caught.value.status == 401
    assert agent.url in str(caught.value) and "GET /v1/guests" in str(caught.value)
    assert "wrong-token-s3cret" not in str(caught.value)


async def test_invalid_spec_is_rejected_naming_the_field(client: AgentClient) -> None:
    invalid = spec().model_copy(update={"cpu": 0})  # model_copy does not validate
    with pytest.raises(AgentRejected) as caught:
        await client.ensure(invalid)
    assert caught.value.status == 422
    assert any(problem.startswith("cpu:") for problem in caught.value.problems)
    assert "cpu" in str(caught.value) and f"PUT /v1/guests/{invalid.uid}" in str(caught.value)
    assert "hunter2" not in str(caught.value)


async def test_404_from_a_wrong_address_is_not_a_missing_guest(
    agent: RunningAgent, endpoint_of: EndpointOf
) -> None:
    endpoint = endpoint_of(agent)
    wrong = AgentEndpoint(endpoint.url + "/not-the-agent", endpoint.token, endpoint.ca_pem)
    async with AgentClient(wrong) as client:
        with pytest.raises(AgentRejected, match="HTTP 404"):
            await client.get("some-guest")


async def test_agent_down_is_unavailable(agent: RunningAgent, endpoint_of: EndpointOf) -> None:
    await agent.stop()
    async with AgentClient(endpoint_of(agent)) as client:
        with pytest.raises(AgentUnavailable, match="cannot connect") as caught:
            await client.healthz()
    assert str(caught.value).startswith(f"agent {agent.url}: GET /healthz: ")
    assert caught.value.status is None


@pytest.mark.parametrize("trust", ["other CA", "system CAs"])
async def test_https_with_the_wrong_ca_is_unavailable(
    start_agent: StartAgent, other_ca_pem: bytes, trust: str
) -> None:
    agent = await start_agent(tls=True)
    ca = other_ca_pem if trust == "other CA" else None
    async with AgentClient(AgentEndpoint(agent.url, AGENT_TOKEN, ca)) as client:
        with pytest.raises(AgentUnavailable, match="TLS certificate not trusted") as caught:
            await client.healthz()
    assert agent.url in str(caught.value)


async def test_a_given_session_is_shared_not_closed(
    agent: RunningAgent, endpoint_of: EndpointOf
) -> None:
    async with aiohttp.ClientSession() as session:
        async with AgentClient(endpoint_of(agent), session) as client:
            await client.healthz()
        assert not session.closed
    with pytest.raises(RuntimeError, match="async with"):
        await AgentClient(endpoint_of(agent)).healthz()


async def test_the_token_and_user_data_show_nowhere(
    client: AgentClient, agent: RunningAgent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert AGENT_TOKEN not in repr(client.endpoint)
    assert agent.url in repr(client.endpoint)
    wanted = spec()
    await client.ensure(wanted)
    await client.get(wanted.uid)
    with pytest.raises(AgentRejected) as rejected:
        await client.ensure(wanted.model_copy(update={"cpu": 0}))
    await agent.stop()
    with pytest.raises(AgentUnavailable) as unavailable:
        await client.delete(wanted.uid)
    for text in (caplog.text, *(f"{e!s} {e!r}" for e in (rejected.value, unavailable.value))):
        assert AGENT_TOKEN not in text
        assert "hunter2" not in text


def test_endpoint_checks_its_address() -> None:
    with pytest.raises(ValueError, match="not an http"):
        AgentEndpoint("ftp://node-1", "t")
    with pytest.raises(ValueError, match="plain http but a CA"):
        AgentEndpoint("http://node-1:8443", "t", b"-----BEGIN CERTIFICATE-----")
    with pytest.raises(ValueError, match="credentials go in the token"):
        AgentEndpoint("https://user:pw@node-1", "t")
    with pytest.raises(ValueError, match="not a PEM certificate"):
        AgentClient(AgentEndpoint("https://node-1", "t", b"garbage"))


AGENT_ERROR = b'{"error": "invalid guest spec: cpu: too small", "problems": ["cpu: too small"]}'


@pytest.mark.parametrize(
    ("status", "body", "guest_uid", "expected"),
    [
        (401, b'{"error": "missing or wrong bearer token"}', None, AgentUnauthorized),
        (403, b"forbidden", None, AgentUnauthorized),
        (404, b'{"error": "no guest g on this node"}', "g", GuestNotFound),
        (404, b'{"error": "no guest g on this node"}', None, AgentRejected),
        (404, b"404: Not Found", "g", AgentRejected),
        (400, b'{"error": "body is not JSON"}', None, AgentRejected),
        (422, AGENT_ERROR, "g", AgentRejected),
        (408, b"", None, AgentUnavailable),
        (429, b"slow down", None, AgentUnavailable),
        (500, b"500 Internal Server Error", None, AgentUnavailable),
        (503, b"<html>" + b"x" * 500, None, AgentUnavailable),
        (302, b"", None, AgentError),
    ],
)
def test_error_for_status(
    status: int, body: bytes, guest_uid: str | None, expected: type[AgentError]
) -> None:
    error = agent_client.error_for_status(
        "https://n:1", "PUT /v1/guests/g", status, body, guest_uid=guest_uid
    )
    assert type(error) is expected
    assert error.status == status
    assert str(error).startswith("agent https://n:1: PUT /v1/guests/g: ")
    assert f"HTTP {status}: " in str(error)
    assert len(str(error)) < 300


def test_rejections_carry_the_agents_message_and_problems() -> None:
    error = agent_client.error_for_status("http://n:1", "PUT /v1/guests/g", 422, AGENT_ERROR)
    assert isinstance(error, AgentRejected)
    assert error.error == "invalid guest spec: cpu: too small"
    assert error.problems == ("cpu: too small",)


# Events


async def test_events_deliver_a_guest_event_after_an_ensure(
    client: AgentClient, agent: RunningAgent
) -> None:
    received: asyncio.Queue[GuestEvent] = asyncio.Queue()

    async def consume() -> None:
        async with contextlib.aclosing(client.events()) as events:
            async for event in events:
                await received.put(event)

    consumer = asyncio.create_task(consume())
    await eventually(lambda: agent.hub.subscribers == 1, "stream subscribed")
    wanted = spec()
    await client.ensure(wanted)
    while True:
        event = await asyncio.wait_for(received.get(), 5)
        if event.guest is not None and (event.guest.uid, event.guest.state) == (
            wanted.uid,
            GuestState.RUNNING,
        ):
            break
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)


async def test_a_silent_stream_is_dead(start_agent: StartAgent, endpoint_of: EndpointOf) -> None:
    agent = await start_agent(heartbeat=30.0)
    async with AgentClient(endpoint_of(agent)) as client:
        with pytest.raises(AgentUnavailable, match=r"no event or heartbeat for 0\.1 s"):
            async for _ in client.events(idle_timeout=0.1):
                pass


async def test_events_end_cleanly_when_the_agent_stops(
    client: AgentClient, agent: RunningAgent
) -> None:
    seen = []
    async with client.event_stream() as stream:
        await agent.stop()
        async for event in stream:
            seen.append(event.type)
    assert seen[0] == "resync"


async def test_events_with_a_wrong_token_fail_on_opening(
    agent: RunningAgent, endpoint_of: EndpointOf
) -> None:
    async with AgentClient(endpoint_of(agent, token="nope")) as client:
        with pytest.raises(AgentUnauthorized, match="GET /v1/events"):
            async with client.event_stream():
                pass


async def watching(
    client: AgentClient, recorder: Recorder, stop: asyncio.Event, idle_timeout: float = 2.0
) -> asyncio.Task[None]:
    return asyncio.create_task(
        agent_client.watch_events(
            client,
            recorder.on_connect,
            recorder.on_event,
            stop,
            backoff=(0.05, 0.2),
            idle_timeout=idle_timeout,
        )
    )


async def test_watch_reconnects_after_the_agent_restarts(
    start_agent: StartAgent, endpoint_of: EndpointOf
) -> None:
    agent = await start_agent(heartbeat=0.2)
    recorder, stop = Recorder(), asyncio.Event()
    async with AgentClient(endpoint_of(agent), timeout=2.0) as client:
        watch = await watching(client, recorder, stop)
        await recorder.wait_for(lambda log: log == ["connect"], "first connection")
        await eventually(lambda: agent.hub.subscribers == 1, "first stream subscribed")
        before = spec()
        await client.ensure(before)
        await recorder.wait_for(lambda log: f"{before.uid}:Running" in log, "event, first")

        port = agent.port
        await agent.stop()
        await agent.start()
        assert agent.port == port
        await recorder.wait_for(lambda log: log.count("connect") == 2, "reconnection")
        await eventually(lambda: agent.hub.subscribers == 1, "second stream subscribed")
        after = spec()
        await client.ensure(after)
        await recorder.wait_for(lambda log: f"{after.uid}:Running" in log, "event, second")

        stop.set()
        await asyncio.wait_for(watch, 2)
    log = recorder.log
    second = log.index("connect", 1)
    assert log[0] == "connect"
    assert log.index(f"{before.uid}:Running") < second < log.index(f"{after.uid}:Running")


async def test_silence_makes_the_watch_reconnect(
    start_agent: StartAgent, endpoint_of: EndpointOf
) -> None:
    agent = await start_agent(heartbeat=30.0)
    recorder, stop = Recorder(), asyncio.Event()
    async with AgentClient(endpoint_of(agent)) as client:
        watch = await watching(client, recorder, stop, idle_timeout=0.1)
        await recorder.wait_for(lambda log: log.count("connect") >= 3, "reconnections")
        stop.set()
        await asyncio.wait_for(watch, 2)
    assert set(recorder.log) == {"connect"}


async def test_a_failed_resync_makes_the_watch_reconnect(
    start_agent: StartAgent, endpoint_of: EndpointOf
) -> None:
    agent = await start_agent(heartbeat=0.2)
    recorder, stop = Recorder(), asyncio.Event()
    recorder.fail_connects = 1
    async with AgentClient(endpoint_of(agent)) as client:
        watch = await watching(client, recorder, stop)
        await recorder.wait_for(lambda log: log.count("connect") == 2, "second connection")
        await eventually(lambda: agent.hub.subscribers == 1, "stream subscribed")
        wanted = spec()
        await client.ensure(wanted)
        await recorder.wait_for(lambda log: f"{wanted.uid}:Running" in log, "event")
        stop.set()
        await asyncio.wait_for(watch, 2)


async def test_stop_ends_the_watch_while_it_backs_off(
    start_agent: StartAgent, endpoint_of: EndpointOf, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=agent_client.__name__)
    agent = await start_agent()
    await agent.stop()
    recorder, stop = Recorder(), asyncio.Event()
    async with AgentClient(endpoint_of(agent)) as client:
        watch = asyncio.create_task(
            agent_client.watch_events(
                client, recorder.on_connect, recorder.on_event, stop, backoff=(30.0, 30.0)
            )
        )
        await eventually(lambda: "cannot connect" in caplog.text, "first attempt failed")
        stop.set()
        await asyncio.wait_for(watch, 2)
    assert recorder.log == []


# Reports in flight


def report(uid: str, state: GuestState) -> GuestEvent:
    return GuestEvent.model_validate(
        {"type": "guest", "time": "2026-01-01T00:00:00Z", "guest": {"uid": uid, "state": state}}
    )


async def test_reports_of_different_guests_overlap_and_one_guests_keep_their_order() -> None:
    """A slow write for one guest holds back only that guest's later reports."""
    applied: list[str] = []
    release = asyncio.Event()

    async def on_event(event: GuestEvent) -> None:
        assert event.guest is not None
        if event.guest.uid == "a" and event.guest.state is GuestState.PROVISIONING:
            await release.wait()
        applied.append(f"{event.guest.uid}:{event.guest.state}")

    reports = agent_client._Reports(on_event)
    await reports.submit(report("a", GuestState.PROVISIONING))
    await reports.submit(report("a", GuestState.RUNNING))
    await reports.submit(report("b", GuestState.RUNNING))
    await eventually(lambda: applied == ["b:Running"], "b applied while a waits")
    release.set()
    await reports.drain()
    assert applied == ["b:Running", "a:Provisioning", "a:Running"]


async def test_a_failed_report_is_raised_once_the_others_are_done() -> None:
    async def on_event(event: GuestEvent) -> None:
        assert event.guest is not None
        if event.guest.uid == "bad":
            raise AgentUnavailable("http://x", "PATCH", "down")

    reports = agent_client._Reports(on_event)
    await reports.submit(report("bad", GuestState.RUNNING))
    await reports.submit(report("good", GuestState.RUNNING))
    with pytest.raises(AgentUnavailable):
        await reports.drain()
