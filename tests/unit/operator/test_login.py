"""The operator logs in without the `kubernetes` client, into one session with a bounded
pool that kopf and the operator's own calls share."""

from __future__ import annotations

import base64
from pathlib import Path

import kopf
import pytest
import yaml
from aiohttp import web

from stratus_operator.handlers import lifecycle
from stratus_operator.handlers.common import WATCHED_KINDS
from stratus_operator.services.kube import Kube, NotLoggedIn
from stratus_operator.services.runtime import AgentPool, Runtime
from stratus_operator.services.settings import ApiSettings, OperatorSettings


async def test_kopf_and_the_operator_share_one_bounded_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def secret(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer t0ken":
            return web.json_response({"reason": "Unauthorized"}, status=401)
        return web.json_response({"data": {"key": base64.b64encode(b"value").decode()}})

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/secrets/s", secret)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
    }))  # fmt: skip
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    settings = OperatorSettings(namespaces=("a", "b"), api=ApiSettings(connections=10))
    kube = Kube()
    rt = Runtime(settings, kube, AgentPool(kube, 1.0))
    try:
        with pytest.raises(NotLoggedIn):
            await kube.secret_data("ns", "s")  # nothing goes out before the login

        found = await lifecycle.login(
            memo=kopf.Memo(runtime=rt), settings=kopf.OperatorSettings(), logger=None
        )
        assert isinstance(found, kopf.AiohttpSession)
        assert found.server == f"http://127.0.0.1:{port}"
        connector = found.aiohttp_session.connector
        # Ten for requests, and one per watch kopf keeps open in each of the two namespaces.
        assert connector is not None and connector.limit == 10 + 2 * WATCHED_KINDS
        assert await kube.secret_data("ns", "s") == {"key": b"value"}
        assert await kube.secret_data("ns", "missing") is None
    finally:
        await kube.close()
        await runner.cleanup()
