"""Images: check the source against the cloud's source policy and that it answers; keep the
phase. Nodes do the downloading (and check the policy again, with their own)."""

from __future__ import annotations

import contextlib
import http
import ipaddress
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from stratus_api import sources
from stratus_api.quantity import ByteQuantity
from stratus_api.reasons import GuestFailure, Reason
from stratus_api.v1alpha1 import Image
from stratus_api.v1alpha1.image import ImagePhase, ImageStatus
from stratus_operator.controllers import conditions
from stratus_operator.services.runtime import Runtime
from stratus_operator.services.settings import ImageSettings
from stratus_operator.services.status import ObjectRef

MAX_REDIRECTS = 5


class SourceProblem(Exception):
    """The probe did not pass; `status` says why, `permanent` whether waiting can help."""

    def __init__(self, status: ImageStatus, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.status = status
        self.permanent = permanent


class PolicyResolver(AbstractResolver):
    """Name resolution that refuses addresses outside the source policy, so a host name
    pointing at the node itself (or a metadata service) is refused like the IP would be."""

    def __init__(self, policy: sources.SourcePolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for entry in found:
            address = ipaddress.ip_address(entry["host"])
            sources.check_address(self._policy, address, host, port)
        return found

    async def close(self) -> None:
        await self._inner.close()


async def _probe(url: str, settings: ImageSettings) -> tuple[int, int | None]:
    """HEAD the URL, following redirects only where the policy allows; (status, length)."""
    timeout = aiohttp.ClientTimeout(total=settings.probe_timeout_seconds)
    connector = aiohttp.TCPConnector(resolver=PolicyResolver(settings.sources))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for _ in range(MAX_REDIRECTS + 1):
            sources.check_url(settings.sources, url)
            async with session.head(url, allow_redirects=False) as response:
                location = response.headers.get("Location")
                if response.status in (301, 302, 303, 307, 308) and location:
                    url = str(response.url.join(URL(location)))
                    continue
                return response.status, response.content_length
    raise sources.SourceRefused(f"{sources.redact(url)}: more than {MAX_REDIRECTS} redirects")


def _transport_problem(exc: BaseException) -> str:
    """What went wrong, in our words: never the remote side's text."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    return type(exc).__name__


def _phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "unknown status"


async def check_source(image: Image, settings: ImageSettings) -> ImageStatus:
    """Ready once the source passes the policy and answers a HEAD request; a Failed image
    stays Failed (the source is immutable)."""
    status = image.status or ImageStatus()
    if status.phase is ImagePhase.FAILED:
        return status
    url, generation = image.spec.source.http.url, image.metadata.generation
    shown = sources.redact(url)
    try:
        code, length = await _probe(url, settings)
    except sources.SourceRefused as exc:
        message = f"spec.source.http.url: refused by the cloud's image source policy: {exc}"
        raise SourceProblem(
            _with(status, ImagePhase.FAILED, GuestFailure.IMAGE_SOURCE_REFUSED, message,
                  generation, stalled=True),
            message, permanent=True,
        ) from None  # fmt: skip
    except (aiohttp.ClientError, TimeoutError) as exc:
        message = f"spec.source.http.url: {shown} is not reachable ({_transport_problem(exc)})"
        raise SourceProblem(
            _with(status, ImagePhase.PENDING, Reason.SOURCE_UNREACHABLE, message, generation),
            message, permanent=False,
        ) from None  # fmt: skip
    if code != 200:
        message = f"spec.source.http.url: {shown} answered HEAD with {code} {_phrase(code)}"
        raise SourceProblem(
            _with(status, ImagePhase.PENDING, Reason.SOURCE_UNREACHABLE, message, generation),
            message, permanent=False,
        )  # fmt: skip
    ready = _with(
        status, ImagePhase.READY, Reason.SOURCE_REACHABLE,
        "nodes download and verify it on first use", generation, ready=True,
    )  # fmt: skip
    update: dict[str, Any] = {"format": image.spec.format or status.format}
    if length is not None:
        with contextlib.suppress(ValueError):  # a length no file has; nodes will see
            update["actual_size"] = ByteQuantity(length)
    return ready.model_copy(update=update)


def _with(
    status: ImageStatus,
    phase: ImagePhase,
    reason: str,
    message: str,
    generation: int | None,
    *,
    ready: bool = False,
    stalled: bool = False,
) -> ImageStatus:
    return status.model_copy(
        update={
            "phase": phase,
            "observed_generation": generation,
            "conditions": conditions.with_progress(
                status.conditions, ready=ready, reason=reason, message=message,
                generation=generation, reconciling=not ready and not stalled, stalled=stalled,
            ),
        }
    )  # fmt: skip


async def write_status(image: Image, status: ImageStatus, runtime: Runtime) -> None:
    await runtime.status.write(
        ObjectRef.of(image), image.status, image.metadata.generation or 0,
        lambda _current, _generation: status, ImageStatus,
    )  # fmt: skip
