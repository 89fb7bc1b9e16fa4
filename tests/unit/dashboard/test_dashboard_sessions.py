"""Dashboard sessions: the token sealed in the cookie, unreadable and unforgeable without
the key, and over when it expires."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from stratus_operator.dashboard.sessions import Sealer, Session


def test_a_sealed_session_opens_with_its_key_only() -> None:
    sealer = Sealer.from_file("")
    session = Session("secret-token", "alice", time.time() + 60)
    cookie = sealer.seal(session)
    assert "secret-token" not in cookie and b"secret-token" not in base64.urlsafe_b64decode(
        cookie + "=" * (-len(cookie) % 4))  # fmt: skip
    assert sealer.open(cookie) == session
    assert Sealer.from_file("").open(cookie) is None  # another replica's key


def test_tampered_garbled_or_expired_cookies_are_no_session() -> None:
    sealer = Sealer.from_file("")
    cookie = sealer.seal(Session("t", "alice", time.time() + 60))
    flipped = cookie[:-3] + ("A" if cookie[-3] != "A" else "B") + cookie[-2:]
    assert sealer.open(flipped) is None
    assert sealer.open("not base64 at all!") is None
    assert sealer.open("") is None and sealer.open(None) is None
    assert sealer.open(sealer.seal(Session("t", "alice", time.time() - 1))) is None


def test_replicas_sharing_the_key_file_share_sessions(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_bytes(b"k" * 32)
    encoded = tmp_path / "encoded"
    encoded.write_text(base64.b64encode(b"k" * 32).decode() + "\n")
    cookie = Sealer.from_file(str(raw)).seal(Session("t", "bob", time.time() + 60))
    assert Sealer.from_file(str(encoded)).open(cookie) is not None
    short = tmp_path / "short"
    short.write_text("c2hvcnQ=")
    with pytest.raises(ValueError, match="32 bytes"):
        Sealer.from_file(str(short))
