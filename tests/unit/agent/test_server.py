"""The agent's HTTP API with the fake compute driver."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from stratus_agent.drivers.compute.fake import FakeComputeDriver
from testsupport import AGENT_AUTH as AUTH
from testsupport import guest_spec

Agent = tuple[TestClient[Any, Any], FakeComputeDriver]
ROUTES = [
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/v1/guests"),
    ("GET", "/v1/guests/abc"),
    ("PUT", "/v1/guests/abc"),
    ("DELETE", "/v1/guests/abc"),
    ("GET", "/v1/events"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "Basic dGVzdA=="])
async def test_every_route_needs_the_token(
    agent: Agent, method: str, path: str, header: str | None
) -> None:
    client, _ = agent
    headers = {"Authorization": header} if header else {}
    response = await client.request(method, path, headers=headers)
    assert response.status == 401
    assert "bearer token" in (await response.json())["error"]


async def wait_for_state(client: TestClient[Any, Any], uid: str, state: str) -> dict[str, Any]:
    for _ in range(200):
        response = await client.get(f"/v1/guests/{uid}", headers=AUTH)
        if response.status == 200:
            body: dict[str, Any] = await response.json()
            if body["state"] == state:
                return body
        await asyncio.sleep(0.01)
    raise AssertionError(f"guest {uid} never reached {state}")


async def test_ensure_is_idempotent_and_delete_removes(agent: Agent) -> None:
    client, compute = agent
    spec = guest_spec()
    uid = spec["uid"]
    first = await client.put(f"/v1/guests/{uid}", json=spec, headers=AUTH)
    assert first.status == 202
    assert (await first.json())["state"] in ("Provisioning", "Running")
    await wait_for_state(client, uid, "Running")

    again = await client.put(f"/v1/guests/{uid}", json=spec, headers=AUTH)
    assert (await again.json()) == {**(await again.json()), "state": "Running", "generation": 1}
    inventory = await (await client.get("/v1/guests", headers=AUTH)).json()
    assert [g["uid"] for g in inventory["guests"]] == [uid]
    assert inventory["node"] == "node-1" and inventory["virtType"] == "fake"
    assert inventory["cpu"] == 8

    halted = {**spec, "generation": 2, "power": "Stopped"}
    await client.put(f"/v1/guests/{uid}", json=halted, headers=AUTH)
    stopped = await wait_for_state(client, uid, "Stopped")
    assert stopped["generation"] == 2

    deleted = await client.delete(f"/v1/guests/{uid}", headers=AUTH)
    assert (await deleted.json()) == {"deleted": True}
    assert await compute.list() == []
    assert (await client.get(f"/v1/guests/{uid}", headers=AUTH)).status == 404
    again_deleted = await client.delete(f"/v1/guests/{uid}", headers=AUTH)
    assert (await again_deleted.json()) == {"deleted": False}


async def test_bad_requests_say_what_is_wrong(agent: Agent) -> None:
    client, _ = agent
    uid = guest_spec()["uid"]
    not_json = await client.put(f"/v1/guests/{uid}", data=b"{nope", headers=AUTH)
    assert not_json.status == 400 and "not JSON" in (await not_json.json())["error"]

    spec = guest_spec(cpu=0)
    invalid = await client.put(f"/v1/guests/{spec['uid']}", json=spec, headers=AUTH)
    body = await invalid.json()
    assert invalid.status == 422 and any(p.startswith("cpu:") for p in body["problems"])

    mismatch = await client.put(f"/v1/guests/{uid}", json=guest_spec(), headers=AUTH)
    assert mismatch.status == 422 and (await mismatch.json())["problems"][0].startswith("uid:")

    binary = await client.put(f"/v1/guests/{uid}", data=b"\xff\xfe", headers=AUTH)
    assert binary.status == 400

    bad_uid = guest_spec(uid="../../etc")
    refused = await client.put("/v1/guests/x", json=bad_uid, headers=AUTH)
    assert refused.status == 400 and "not a guest UID" in (await refused.json())["error"]


# Paths as a client may send them, percent-encoded: aiohttp decodes %2e%2e%2f to ../ in
# match_info, so the check must happen on the decoded {uid}.
BAD_UID_PATHS = [
    "/v1/guests/%2e%2e%2f%2e%2e%2fetc",
    "/v1/guests/..%2F..%2Fetc%2Fpasswd",
    "/v1/guests/%2e%2e",
    "/v1/guests/abc",
    "/v1/guests/6F1C2A3B-4D5E-4F60-8A7B-9C0D1E2F3A4B",  # upper case: not how Kubernetes writes it
    "/v1/guests/6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b%00",
    "/v1/guests/6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b%0a",
]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("path", BAD_UID_PATHS)
async def test_a_uid_that_is_not_a_uid_is_refused_with_400(
    agent: Agent, method: str, path: str
) -> None:
    client, compute = agent
    response = await client.request(
        method, URL(path, encoded=True), json=guest_spec(), headers=AUTH
    )
    body = await response.json()
    assert response.status == 400, body
    assert "is not a guest UID" in body["error"]
    assert await compute.list() == []
    # The node is still fine: inventory and a real guest's delete answer as usual.
    assert (await client.get("/v1/guests", headers=AUTH)).status == 200
    spec = guest_spec()
    deleted = await client.delete(f"/v1/guests/{spec['uid']}", headers=AUTH)
    assert (deleted.status, await deleted.json()) == (200, {"deleted": False})


async def test_an_older_generation_is_refused(agent: Agent) -> None:
    client, _ = agent
    spec = guest_spec(generation=3)
    await client.put(f"/v1/guests/{spec['uid']}", json=spec, headers=AUTH)
    await wait_for_state(client, spec["uid"], "Running")
    older = await client.put(
        f"/v1/guests/{spec['uid']}", json={**spec, "generation": 2}, headers=AUTH
    )
    assert older.status == 409 and "older" in (await older.json())["error"]


async def test_event_stream_reports_changes_and_heartbeats(agent: Agent) -> None:
    client, compute = agent
    response = await client.get("/v1/events", headers=AUTH)
    assert response.status == 200
    first = json.loads(await asyncio.wait_for(response.content.readline(), 5))
    assert first["type"] == "resync"  # live from here: the client reads the inventory now
    spec = guest_spec()
    await client.put(f"/v1/guests/{spec['uid']}", json=spec, headers=AUTH)
    seen: list[dict[str, Any]] = []
    while not any((e.get("guest") or {}).get("state") == "Running" for e in seen):
        seen.append(json.loads(await asyncio.wait_for(response.content.readline(), 5)))
    compute.crash(spec["uid"])
    crashed = json.loads(await asyncio.wait_for(response.content.readline(), 5))
    assert crashed["guest"] == {**crashed["guest"], "uid": spec["uid"], "state": "Crashed"}
    heartbeat = json.loads(await asyncio.wait_for(response.content.readline(), 5))
    assert heartbeat["type"] == "heartbeat"
    response.close()


async def test_metrics_count_guests(agent: Agent) -> None:
    client, _ = agent
    spec = guest_spec()
    await client.put(f"/v1/guests/{spec['uid']}", json=spec, headers=AUTH)
    await wait_for_state(client, spec["uid"], "Running")
    text = await (await client.get("/metrics", headers=AUTH)).text()
    assert 'stratus_agent_guests{state="Running"} 1.0' in text
    assert "stratus_agent_requests_total" in text


async def test_user_data_never_reaches_the_logs(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = agent
    caplog.set_level(logging.DEBUG)
    spec = guest_spec()
    await client.put(f"/v1/guests/{spec['uid']}", json=spec, headers=AUTH)
    await wait_for_state(client, spec["uid"], "Running")
    inventory = await (await client.get("/v1/guests", headers=AUTH)).text()
    assert "hunter2" not in caplog.text
    assert "hunter2" not in inventory


async def test_lifecycle_verbs_over_the_api(agent: Agent) -> None:
    """Paused and a restart token as the operator sends them: the status says Paused, then
    carries the token acted on; a repeated PUT restarts nothing."""
    client, compute = agent
    spec = guest_spec(power="Paused", restartToken="t1")
    uid = spec["uid"]
    assert (await client.put(f"/v1/guests/{uid}", json=spec, headers=AUTH)).status == 202
    paused = await wait_for_state(client, uid, "Paused")
    assert paused["restartToken"] == "t1"

    restart = {**spec, "generation": 2, "power": "Running", "restartToken": "t2"}
    for _ in range(2):
        assert (await client.put(f"/v1/guests/{uid}", json=restart, headers=AUTH)).status == 202
        running = await wait_for_state(client, uid, "Running")
    for _ in range(200):
        if running["restartToken"] == "t2":
            break
        await asyncio.sleep(0.01)
        running = await (await client.get(f"/v1/guests/{uid}", headers=AUTH)).json()
    assert (running["restartToken"], running["restarts"]) == ("t2", 0)
    assert compute.boots[uid] == 2
