"""Dashboard sessions, kept by the browser: the user's Kubernetes token, sealed with AES-GCM
in an HttpOnly, SameSite=Strict cookie, as the Kubernetes Dashboard keeps its JWE. Nothing
is stored server-side, so any operator replica serves any session, and the key (a Secret in
the chart, else made at start) is the only thing replicas share. The token is never logged
and never reaches the page's scripts.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

COOKIE = "stratus_session"
_NONCE = 12


@dataclass(frozen=True)
class Session:
    token: str
    username: str
    expires: float  # epoch seconds


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: str) -> Sealer:
        """A key from a file: 32 bytes, raw or base64 (a Secret's value either way); a new
        random one when `path` is empty (one replica: sessions end with the process)."""
        if not path:
            return cls(AESGCM.generate_key(bit_length=256))
        raw = Path(path).read_bytes().strip()
        key = raw if len(raw) == 32 else base64.b64decode(raw)
        if len(key) != 32:
            raise ValueError(f"{path}: a session key is 32 bytes (raw or base64)")
        return cls(key)

    def seal(self, session: Session) -> str:
        nonce = os.urandom(_NONCE)
        plain = json.dumps({"t": session.token, "u": session.username, "e": session.expires})
        sealed = self._aead.encrypt(nonce, plain.encode(), COOKIE.encode())
        return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, cookie: str | None) -> Session | None:
        """The session in a cookie; None when there is none, it was not sealed with this key,
        or it has expired."""
        if not cookie:
            return None
        try:
            raw = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], COOKIE.encode())
            fields = json.loads(plain)
            session = Session(str(fields["t"]), str(fields["u"]), float(fields["e"]))
        except (ValueError, InvalidTag, KeyError, TypeError):
            return None
        return session if session.expires > time.time() else None
