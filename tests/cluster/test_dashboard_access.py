"""The dashboard against the real API server, as a browser would meet it: sign-in only with a
token the API server accepts, every page and change made with the user's own rights and
refusals shown with the API server's words, nothing from another site, and the token in
neither the cookie's text nor the operator's log."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp

from stratus_devcloud.controlplane import free_port
from testsupport import Cluster, wait_until

if TYPE_CHECKING:
    from conftest import MakeOperator

INSECURE = ssl._create_unverified_context()  # the operator's certificate is self-signed here
EVIL = {"Origin": "https://evil.example"}  # another site's page
ALERT = re.compile(r'role="alert"[^>]*>(.*?)</(?:p|div|td)>', re.S)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def reader_of(cluster: Cluster, namespace: str) -> str:
    """A token whose user may work with Stratus objects in `namespace` only."""
    cluster.kubectl("create", "serviceaccount", "dash", "-n", namespace)
    cluster.kubectl("create", "role", "dash", "--verb=*", "--resource=*.stratus.io",
                    "-n", namespace)  # fmt: skip
    cluster.kubectl("create", "rolebinding", "dash", "--role=dash",
                    f"--serviceaccount={namespace}:dash", "-n", namespace)  # fmt: skip
    return str(cluster.kubectl("create", "token", "dash", "-n", namespace).stdout.strip())


async def test_the_dashboard_signs_in_with_tokens_and_acts_with_the_users_rights(
    cluster: Cluster, namespace: str, make_operator: MakeOperator
) -> None:
    port = free_port()
    operator = make_operator("operator", "--console-port", str(port),
                             "--console-host", "127.0.0.1")  # fmt: skip
    operator.start()
    wait_until("the console port", lambda: port_open(port), timeout=60)
    token = reader_of(cluster, namespace)
    base = f"https://127.0.0.1:{port}"
    ours = {"Origin": base}
    jar = aiohttp.CookieJar(unsafe=True)  # keeps cookies of an IP address
    async with aiohttp.ClientSession(cookie_jar=jar) as http:

        async def call(method: str, path: str, **kw: object) -> tuple[int, str, str]:
            async with http.request(method, base + path, ssl=INSECURE, allow_redirects=False,
                                    **kw) as reply:  # type: ignore[arg-type]  # fmt: skip
                return reply.status, reply.headers.get("Location", ""), await reply.text()

        # Not signed in: pages send to the log-in page, changes and live streams get 401.
        status, where, _ = await call("GET", f"/ns/{namespace}/instances")
        assert (status, where) == (303, f"/login?next=/ns/{namespace}/instances")
        assert (await call("POST", f"/ns/{namespace}/networks", headers=ours))[0] == 401
        assert (await call("GET", f"/ns/{namespace}/instances/live"))[0] == 401

        await signing_in(call, jar, token, ours)

        # Signed in: the user's own rights, the API server's own words.
        status, _, page = await call("GET", "/")
        assert status == 200 and f">{namespace}</a>" in page and ">default</a>" not in page
        status, _, page = await call("GET", "/ns/default/instances")
        assert status == 403 and "cannot list resource" in ALERT.findall(page)[0]
        form = {"name": "web", "type": "overlay", "cidr": "10.40.0.0/33"}
        status, _, page = await call("POST", f"/ns/{namespace}/networks", headers=ours, data=form)
        assert status == 422 and "spec.subnets[0].cidr" in ALERT.findall(page)[0]
        assert 'value="10.40.0.0/33"' in page  # what was typed is kept for correcting
        status, where, _ = await call("POST", f"/ns/{namespace}/networks", headers=ours,
                                      data={**form, "cidr": "10.40.0.0/24"})  # fmt: skip
        assert (status, where) == (303, f"/ns/{namespace}/networks/web")
        made = json.loads(cluster.kubectl("get", "network", "web", "-n", namespace,
                                          "-o", "json").stdout)  # fmt: skip
        assert made["spec"]["subnets"][0]["cidr"] == "10.40.0.0/24"
        # A change from another site is refused even with the session cookie.
        delete = f"/ns/{namespace}/networks/web/delete"
        assert (await call("POST", delete, headers=EVIL))[0] == 403
        assert (await call("POST", delete))[0] == 403
        status, where, _ = await call("POST", delete, headers=ours)
        assert (status, where) == (303, f"/ns/{namespace}/networks")

        await live_table_follows(http, base, cluster, namespace)
        await live_pages_are_capped_per_user(http, base, namespace)

        # A token that stops working (its ServiceAccount deleted) ends the session.
        cluster.kubectl("delete", "serviceaccount", "dash", "-n", namespace)
        for _ in range(30):  # the API server drops the token once the account is gone
            status, where, _ = await call("GET", f"/ns/{namespace}/networks")
            if status != 200:
                break
            await asyncio.sleep(1)
        assert (status, where) == (303, f"/login?next=/ns/{namespace}/networks")

        # A forged or foreign cookie is no session.
        jar.update_cookies({"stratus_session": "forged"}, aiohttp.client.URL(base))
        assert (await call("GET", "/"))[0] == 303

    operator.stop()
    log = operator.log.read_text()
    assert f"dashboard: system:serviceaccount:{namespace}:dash signed in" in log
    assert token not in log


Call = Callable[..., Awaitable[tuple[int, str, str]]]


async def signing_in(call: Call, jar: aiohttp.CookieJar, token: str, ours: dict[str, str]
                     ) -> None:  # fmt: skip
    # Sign-in: a wrong token is refused by the API server's review; another site may not
    # sign a browser in; `next` never leaves the site.
    status, _, page = await call("POST", "/login", headers=ours, data={"token": "nope"})
    assert status == 401 and "does not accept this token" in page
    assert (await call("POST", "/login", data={"token": token}))[0] == 403
    assert (await call("POST", "/login", headers=EVIL, data={"token": token}))[0] == 403
    away = {"token": token, "next": "https://evil.example/"}
    status, where, _ = await call("POST", "/login", headers=ours, data=away)
    assert (status, where) == (303, "/")
    cookie = next(c for c in jar if c.key == "stratus_session")
    assert cookie["httponly"] and cookie["secure"] and cookie["samesite"] == "Strict"
    assert token not in cookie.value


async def live_table_follows(http: aiohttp.ClientSession, base: str, cluster: Cluster,
                             namespace: str) -> None:  # fmt: skip
    # The live stream sends the table again after a change.
    async with http.get(f"{base}/ns/{namespace}/networks/live", ssl=INSECURE) as live:
        assert live.headers["Content-Type"] == "text/event-stream"
        first = await live.content.readuntil(b"\n\n")
        assert first.startswith(b"event: fragment\ndata: ")
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(
            {"apiVersion": "stratus.io/v1alpha1", "kind": "Network",
             "metadata": {"name": "later"},
             "spec": {"type": "overlay", "subnets": [{"cidr": "10.41.0.0/24"}]}}))  # fmt: skip
        while b"row-later" not in (changed := await live.content.readuntil(b"\n\n")):
            pass
        assert changed.startswith(b"event: fragment")


async def live_pages_are_capped_per_user(http: aiohttp.ClientSession, base: str,
                                         namespace: str) -> None:  # fmt: skip
    """16 live pages at once per user (each holds watches as its user); the next is refused
    with 429 until one closes."""
    url = f"{base}/ns/{namespace}/networks/live"
    opened = []
    try:
        while len(opened) <= 16:
            live = await http.get(url, ssl=INSECURE)
            if live.status != 200:
                break
            opened.append(live)
            await live.content.readuntil(b"\n\n")
        assert (len(opened), live.status) == (16, 429)
        assert "16 live pages open" in await live.text()
    finally:
        for live in opened:
            live.close()
    for _ in range(20):  # a closed page lets go of its place at once
        async with http.get(url, ssl=INSECURE) as again:
            if again.status == 200:
                return
        await asyncio.sleep(0.5)
    raise AssertionError("closed live pages were never let go")
