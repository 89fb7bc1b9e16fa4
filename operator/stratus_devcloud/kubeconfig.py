"""kubeconfig files with the certificates embedded, so they work from any directory."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path, *, server: str, ca: Path, user: str, context: str,
    cert: Path | None = None, key: Path | None = None, token: str | None = None,
) -> None:  # fmt: skip
    """A client certificate and key, or a bearer token (a ServiceAccount's)."""
    if token is not None:
        credentials = {"token": token}
    elif cert is not None and key is not None:
        credentials = {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}
    else:
        raise ValueError("a kubeconfig needs a certificate and key, or a token")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": context,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": credentials,
            }
        ],
        "contexts": [{"name": context, "context": {"cluster": context, "user": user}}],
        "current-context": context,
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
