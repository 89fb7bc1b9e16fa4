"""Who a caller is and what they may do, as the API server says: the caller's bearer token
reviewed (TokenReview), then each action checked (SubjectAccessReview). This is how
Kubernetes components delegate authentication and authorization (kube-controller-manager's
/metrics, kube-rbac-proxy), so an admin grants Stratus endpoints with ordinary RBAC.
Answers are kept a few seconds, keyed by the token's digest (the token itself is never
kept or logged).
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from stratus_operator.services.kube import Kube

T = TypeVar("T")


@dataclass(frozen=True)
class Identity:
    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict, compare=False, hash=False)

    def as_user(self) -> dict[str, Any]:
        """The SubjectAccessReview spec's user fields."""
        return {"user": self.username, "uid": self.uid, "groups": list(self.groups),
                "extra": self.extra}  # fmt: skip


class _Kept(Generic[T]):
    """Answers kept `ttl` seconds, at most `size` of them (the stale go first, then the
    oldest)."""

    def __init__(self, ttl: float, size: int) -> None:
        self._ttl, self._size = ttl, size
        self._answers: dict[Any, tuple[float, T]] = {}

    def get(self, key: Any) -> tuple[bool, T | None]:
        kept = self._answers.get(key)
        if kept is None or kept[0] <= time.monotonic():
            return False, None
        return True, kept[1]

    def put(self, key: Any, value: T) -> None:
        now = time.monotonic()
        if len(self._answers) >= self._size:
            stale = [k for k, (until, _) in self._answers.items() if until <= now]
            for k in stale or [next(iter(self._answers))]:
                del self._answers[k]
        self._answers[key] = (now + self._ttl, value)


class Access:
    def __init__(self, kube: Kube, ttl: float = 10.0, size: int = 256) -> None:
        self._kube = kube
        self._identities: _Kept[Identity | None] = _Kept(ttl, size)
        self._verdicts: _Kept[bool] = _Kept(ttl, size)

    async def identify(self, token: str) -> Identity | None:
        """The token's user, or None when the API server does not accept the token."""
        key = hashlib.sha256(token.encode()).hexdigest()
        known, found = self._identities.get(key)
        if known:
            return found
        review = await self._kube.token_review(token, [])
        user: dict[str, Any] = review.get("user") or {}
        found = Identity(
            username=str(user.get("username", "")), uid=str(user.get("uid", "")),
            groups=tuple(user.get("groups") or ()), extra=dict(user.get("extra") or {}),
        ) if review.get("authenticated") else None  # fmt: skip
        self._identities.put(key, found)
        return found

    async def allowed(self, who: Identity, attributes: dict[str, Any]) -> bool:
        """Whether `who` may do this: `attributes` is a SubjectAccessReview's
        {"resourceAttributes": ...} or {"nonResourceAttributes": ...}."""
        key = (who, repr(sorted(attributes.items())))
        known, found = self._verdicts.get(key)
        if known and found is not None:
            return found
        verdict = await self._kube.access_review({**who.as_user(), **attributes})
        self._verdicts.put(key, verdict)
        return verdict

    async def admit(self, token: str, attributes: dict[str, Any]) -> tuple[int, Identity | None]:
        """An HTTP verdict on a caller: 200 with who they are when they may do this (see
        `allowed`), 403 with who they are when not, 401 when the API server does not
        accept the token."""
        who = await self.identify(token)
        if who is None:
            return 401, None
        return (200 if await self.allowed(who, attributes) else 403), who


def bearer(authorization: str, protocols: str = "") -> str | None:
    """The bearer token of a request: its Authorization header, else (browsers cannot set
    headers on a WebSocket) a `base64url.bearer.authorization.k8s.io.` WebSocket
    subprotocol, as the API server accepts for exec and port-forward."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    prefix = "base64url.bearer.authorization.k8s.io."
    for offered in (p.strip() for p in protocols.split(",")):
        if offered.startswith(prefix):
            encoded = offered[len(prefix) :]
            padded = encoded + "=" * (-len(encoded) % 4)
            try:
                token = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return None
            return token or None
    return None
