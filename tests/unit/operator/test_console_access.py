"""Whose token a console request carries, and where `kubectl stratus` finds the proxy and
the user's token."""

from __future__ import annotations

import base64
from pathlib import Path

import click
import pytest
import yaml

from stratus_cli import kubectl_plugin
from stratus_operator.services.access import bearer


def subprotocol(token: str) -> str:
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    return f"base64url.bearer.authorization.k8s.io.{encoded}"


def test_the_token_comes_from_the_header_else_the_websocket_subprotocol() -> None:
    assert bearer("Bearer abc.def") == "abc.def"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("", f"binary, {subprotocol('eyJh.b-c_d')}") == "eyJh.b-c_d"
    assert bearer("Basic dXNlcjpwYXNz") is None
    assert bearer("", "binary") is None
    assert bearer("", "base64url.bearer.authorization.k8s.io.%%%") is None


def kubeconfig(tmp_path: Path, user: dict[str, str], namespace: str | None = None) -> Path:
    context = {"cluster": "c", "user": "u", **({"namespace": namespace} if namespace else {})}
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "current-context": "ctx", "contexts": [{"name": "ctx", "context": context}],
        "users": [{"name": "u", "user": user}], "clusters": [],
    }))  # fmt: skip
    return path


def test_the_plugin_takes_the_kubeconfig_token_and_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, {"tokenFile": str(token_file)},
                                                    "team")))  # fmt: skip
    monkeypatch.setenv("STRATUS_CONSOLE_SERVER", "https://proxy:8445/")
    monkeypatch.delenv("STRATUS_TOKEN", raising=False)
    target = kubectl_plugin._target(None, None, None, None, insecure=True)
    assert (target.token, target.namespace) == ("from-a-file", "team")
    assert target.url("web", "console") == (
        "https://proxy:8445/v1/namespaces/team/instances/web/console")  # fmt: skip
    assert kubectl_plugin._target("other", None, "mine", None, insecure=True).namespace == "other"


def test_the_plugin_says_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, {"client-certificate": "x"})))
    monkeypatch.delenv("STRATUS_TOKEN", raising=False)
    monkeypatch.delenv("STRATUS_CONSOLE_SERVER", raising=False)
    with pytest.raises(click.UsageError, match="--server"):
        kubectl_plugin._target(None, None, None, None, insecure=False)
    with pytest.raises(click.UsageError, match="kubectl create token"):
        kubectl_plugin._target(None, "https://proxy:8445", None, None, insecure=False)
