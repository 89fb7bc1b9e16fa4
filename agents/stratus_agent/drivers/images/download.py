"""One image download over HTTP(S), inside the node's source policy and limits.

Every connection is checked: the URL before it is used, every address a name resolves to
(a resolver that refuses loopback, link-local and the other refused networks, so a DNS name
pointing at 127.0.0.1 or 169.254.169.254 goes nowhere), and every redirect, which is
followed here rather than by aiohttp. What a server says is never repeated: a failure
names the status code and its standard phrase, and URLs are shown without credentials.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import http
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from stratus_agent.errors import ProvisioningError
from stratus_api import sources
from stratus_api.reasons import GuestFailure

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Free space is looked at again after this many bytes written (a statvfs per 8 MiB).
FREE_SPACE_CHECK_BYTES = 8 << 20
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    min_free_bytes: int
    connect_timeout_seconds: float
    read_timeout_seconds: float


class PolicyResolver(AbstractResolver):
    """Resolves names as the system does, then refuses the whole answer when any address
    is in a refused network (unless the endpoint is allowed explicitly)."""

    def __init__(self, policy: sources.SourcePolicy, inner: AbstractResolver | None = None):
        self._policy = policy
        self._inner = inner if inner is not None else ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = ipaddress.ip_address(result["host"])
            sources.check_address(self._policy, address, host, port)
        return results

    async def close(self) -> None:
        await self._inner.close()


def available_bytes(directory: Path) -> int:
    """Free bytes an unprivileged writer may use on the filesystem of `directory`."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def _fail(reason: GuestFailure, name: str, text: str) -> ProvisioningError:
    return ProvisioningError(reason, f"image {name}: {text}")


def _phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "unknown status"


def _checked(policy: sources.SourcePolicy, url: URL) -> None:
    """check_url on the URL as aiohttp will use it, and the two parsers must agree on the
    host and port, so no parser difference can slip an address past the policy."""
    host, port = sources.check_url(policy, str(url))
    if (url.raw_host or "").lower() != host or url.port != port:
        raise sources.SourceRefused(f"{sources.redact(str(url))}: ambiguous host or port")


def _next_url(current: URL, location: str) -> URL:
    target = current.join(URL(location))
    if target.user is None and current.user is not None and target.origin() == current.origin():
        # Same server: keep the credentials; another server never receives them.
        target = target.with_user(current.user).with_password(current.password)
    return target


def _status_error(name: str, shown: str, code: int) -> ProvisioningError:
    text = f"GET {shown} answered {code} {_phrase(code)}"
    if code >= 500 or code in RETRYABLE_CLIENT_ERRORS:
        return _fail(GuestFailure.IMAGE_DOWNLOAD_FAILED, name, text)
    return _fail(GuestFailure.IMAGE_SOURCE_ERROR, name, text + ", expected 200 OK")


def _client_error_text(exc: BaseException, limits: Limits) -> str:
    """What went wrong, in our words: aiohttp's messages can quote what the server sent."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"could not connect within {limits.connect_timeout_seconds:g} s"
    if isinstance(exc, TimeoutError):
        return f"no data for {limits.read_timeout_seconds:g} s"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake or certificate verification failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return f"cannot connect to {exc.host}:{exc.port} ({reason})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the response body was cut short or malformed"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "the server's answer is not valid HTTP"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"connection error ({exc.strerror or 'no detail'})"
    return f"failed ({type(exc).__name__})"


def _refusal(exc: BaseException) -> sources.SourceRefused | None:
    """The policy refusal behind an aiohttp error (the resolver raised it), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sources.SourceRefused):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


async def fetch(
    url: str, target: Path, *, name: str, policy: sources.SourcePolicy, limits: Limits
) -> str:
    """Download `url` into `target` (created 0600); return its sha256 hex digest. Raises
    ProvisioningError; whatever is left at `target` after a failure is the caller's to
    remove."""
    shown = sources.redact(url)
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=limits.connect_timeout_seconds,
        sock_read=limits.read_timeout_seconds,
    )
    try:
        current = URL(url)
        connector = aiohttp.TCPConnector(resolver=PolicyResolver(policy), use_dns_cache=False)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, trust_env=False
        ) as session:
            for _hop in range(MAX_REDIRECTS + 1):
                _checked(policy, current)
                shown = sources.redact(str(current))
                async with session.get(
                    current, allow_redirects=False, headers={"Accept-Encoding": "identity"}
                ) as response:
                    if response.status in REDIRECTS:
                        location = response.headers.get("Location")
                        if not location:
                            raise _fail(
                                GuestFailure.IMAGE_SOURCE_ERROR,
                                name,
                                f"GET {shown} answered {response.status} without a Location",
                            )
                        try:
                            current = _next_url(current, location)
                        except ValueError:
                            raise _fail(
                                GuestFailure.IMAGE_SOURCE_ERROR,
                                name,
                                f"GET {shown} redirected to an invalid URL",
                            ) from None
                        log.info("image %s: redirected to %s", name, sources.redact(str(current)))
                        continue
                    if response.status != 200:
                        raise _status_error(name, shown, response.status)
                    return await _stream(response, target, name, shown, limits)
            raise _fail(
                GuestFailure.IMAGE_SOURCE_ERROR,
                name,
                f"GET {sources.redact(url)}: more than {MAX_REDIRECTS} redirects",
            )
    except sources.SourceRefused as exc:
        raise _fail(GuestFailure.IMAGE_SOURCE_REFUSED, name, f"source refused: {exc}") from None
    except ValueError as exc:  # yarl: not a URL at all
        raise _fail(GuestFailure.IMAGE_SOURCE_REFUSED, name, f"{shown}: not a valid URL") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        refused = _refusal(exc)
        if refused is not None:
            raise _fail(
                GuestFailure.IMAGE_SOURCE_REFUSED, name, f"source refused: {refused}"
            ) from None
        raise _fail(
            GuestFailure.IMAGE_DOWNLOAD_FAILED,
            name,
            f"GET {shown}: {_client_error_text(exc, limits)}",
        ) from exc


async def _ensure_room(directory: Path, needed: int, name: str, limits: Limits) -> None:
    free = await asyncio.to_thread(available_bytes, directory)
    if free < needed + limits.min_free_bytes:
        raise _fail(
            GuestFailure.NODE_STORAGE_FULL,
            name,
            f"{free} bytes free on the image cache's filesystem; {needed} more needed while "
            f"keeping {limits.min_free_bytes} free (images.min_free_bytes)",
        )


def _too_large(name: str, limits: Limits, size: str) -> ProvisioningError:
    return _fail(
        GuestFailure.IMAGE_TOO_LARGE,
        name,
        f"{size} exceeds the node's limit of {limits.max_bytes} bytes (images.max_image_bytes)",
    )


def _write(fd: int, digest: hashlib._Hash, chunk: bytes) -> None:
    digest.update(chunk)
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]


def _storage_error(exc: OSError, name: str) -> ProvisioningError | OSError:
    if exc.errno in STORAGE_ERRNOS:
        return _fail(GuestFailure.NODE_STORAGE_FULL, name, "the image cache's filesystem is full")
    return exc


async def _stream(
    response: aiohttp.ClientResponse, target: Path, name: str, shown: str, limits: Limits
) -> str:
    length = response.content_length
    if length is not None and length > limits.max_bytes:
        raise _too_large(name, limits, f"Content-Length of {length} bytes")
    await _ensure_room(target.parent, length or 0, name, limits)
    log.info("image %s: downloading %s (%s bytes)", name, shown, length or "unknown")
    digest = hashlib.sha256()
    received, since_check = 0, 0
    fd = os.open(
        target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    try:
        async for chunk in response.content.iter_chunked(CHUNK):
            received += len(chunk)
            if received > limits.max_bytes:
                raise _too_large(name, limits, f"more than {limits.max_bytes} bytes received")
            try:
                await asyncio.to_thread(_write, fd, digest, chunk)
            except OSError as exc:
                raise _storage_error(exc, name) from exc
            since_check += len(chunk)
            if since_check >= FREE_SPACE_CHECK_BYTES:
                since_check = 0
                remaining = max((length or 0) - received, 0)
                await _ensure_room(target.parent, remaining, name, limits)
    finally:
        os.close(fd)
    return digest.hexdigest()
