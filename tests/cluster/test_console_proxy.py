"""The console proxy against the real API server: it admits only callers whose own token
carries get on instances/console in the Instance's namespace, says why when it closes, and
logs who opened what (never the token)."""

from __future__ import annotations

import base64
import json
import ssl
from typing import TYPE_CHECKING

import aiohttp
import pytest

from stratus_devcloud.controlplane import free_port
from testsupport import Cluster, apply, basics, instance

if TYPE_CHECKING:
    from conftest import FakeAgent, ImageServer, MakeOperator

INSECURE = ssl._create_unverified_context()  # the operator's certificate is self-signed here


async def attempt(url: str, token: str | None = None, *, via_protocol: bool = False
                  ) -> tuple[int, int | None, str]:  # fmt: skip
    """(HTTP status, close code, close reason) of a console request."""
    headers, protocols = {}, ["binary"]
    if token and via_protocol:
        encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
        protocols.append(f"base64url.bearer.authorization.k8s.io.{encoded}")
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(url, headers=headers, protocols=protocols,
                                          ssl=INSECURE)  # fmt: skip
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, None, ""
        message = await ws.receive(timeout=30)
        await ws.close()
        return 101, ws.close_code, str(message.extra or "")


@pytest.fixture
def grant(cluster: Cluster, namespace: str) -> dict[str, str]:
    """Tokens: `user` may open consoles in the namespace, `viewer` may only read Instances."""
    rules = {"user": [{"apiGroups": ["stratus.io"], "resources": ["instances/console"],
                       "verbs": ["get"]}],
             "viewer": [{"apiGroups": ["stratus.io"], "resources": ["instances"],
                         "verbs": ["get"]}]}  # fmt: skip
    tokens = {}
    for account, granted in rules.items():
        cluster.kubectl("create", "serviceaccount", account, "-n", namespace)
        cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
            "items": [
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": account, "namespace": namespace}, "rules": granted},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": account, "namespace": namespace},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                             "name": account},
                 "subjects": [{"kind": "ServiceAccount", "name": account,
                               "namespace": namespace}]}]}))  # fmt: skip
        tokens[account] = cluster.kubectl(
            "create", "token", account, "-n", namespace
        ).stdout.strip()
    return tokens


async def test_only_callers_with_the_right_get_a_console_and_closes_say_why(
    cluster: Cluster, namespace: str, fake_agent: FakeAgent, make_operator: MakeOperator,
    image_server: ImageServer, grant: dict[str, str],
) -> None:  # fmt: skip
    port = free_port()
    operator = make_operator("operator", "--console-port", str(port),
                             "--console-host", "127.0.0.1")  # fmt: skip
    operator.start()
    apply(cluster, namespace, *basics(image_server.url()),
          instance("web", nodeSelector={"stratus.io/test": fake_agent.name}))  # fmt: skip
    cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "instance/web",
                    "--timeout=60s")  # fmt: skip
    base = f"wss://127.0.0.1:{port}/v1/namespaces/{namespace}/instances"
    user = grant["user"]

    assert (await attempt(f"{base}/web/console"))[0] == 401
    assert (await attempt(f"{base}/web/console", "not-a-token"))[0] == 401
    assert (await attempt(f"{base}/web/console", grant["viewer"]))[0] == 403
    # The right is per namespace and per stream: none elsewhere, none for VNC.
    elsewhere = base.replace(f"/namespaces/{namespace}/", "/namespaces/default/")
    assert (await attempt(f"{elsewhere}/web/console", user))[0] == 403
    assert (await attempt(f"{base}/web/vnc", user))[0] == 403

    status, code, reason = await attempt(f"{base}/missing/console", user)
    assert (status, code) == (101, 4404) and reason == f"no Instance {namespace}/missing"
    # The fake driver's guest has no console: the node says so, the proxy passes it on.
    for via_protocol in (False, True):
        status, code, reason = await attempt(f"{base}/web/console", user,
                                             via_protocol=via_protocol)  # fmt: skip
        assert (status, code) == (101, 4409) and "HTTP 409" in reason, reason

    operator.stop()
    log = operator.log.read_text()
    who = f"system:serviceaccount:{namespace}:user"
    assert f"console session: {who} console of Instance {namespace}/web" in log
    assert all(token not in log for token in grant.values())
