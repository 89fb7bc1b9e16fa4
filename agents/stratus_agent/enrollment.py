"""Joining a cluster from an agent pod: the pod's projected ServiceAccount token buys this
node's credentials from the operator's enrollment endpoint (see stratus_api.enrollment_wire).

The node's key is made here and never leaves it; the operator signs a CSR for it. What comes
back (the serving certificate, the bearer token the operator will send) is written where the
agent's configuration reads it, readable by root only. The agent trusts the endpoint through
the CA certificate the operator publishes (mounted from a ConfigMap), under the Service's
name. Until the operator answers, this retries with backoff, saying why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from stratus_agent.config import AgentConfig
from stratus_api.enrollment_wire import ENROLLMENT_PATH, EnrollmentGrant, EnrollmentRequest

log = logging.getLogger(__name__)
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class EnrollmentOptions:
    url: str  # https://HOST:PORT of the enrollment endpoint
    server_name: str  # the name its certificate is checked against (the Service's)
    ca_file: Path  # the CA certificate the operator publishes
    token_file: Path  # the pod's projected ServiceAccount token (re-read at each attempt)


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")


def _write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, never readable by others, never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(partial, path)


def node_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The node's serving key: the one kept at `path`, else a new one kept there."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(path, pem.decode())
    return key


def signing_request(key: ec.EllipticCurvePrivateKey, node: str) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def request_grant(options: EnrollmentOptions, body: EnrollmentRequest) -> EnrollmentGrant:
    """One attempt; Refused with the endpoint's reason, or aiohttp's errors."""
    context = ssl.create_default_context(cafile=str(options.ca_file))
    token = options.token_file.read_text().strip()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(
            options.url.rstrip("/") + ENROLLMENT_PATH,
            data=body.model_dump_json(by_alias=True),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            ssl=context,
            server_hostname=options.server_name,
        ) as reply,
    ):
        text = await reply.text()
        if reply.status != 200:
            raise Refused(reply.status, text[:500])
    try:
        return EnrollmentGrant.model_validate_json(text)
    except ValidationError as exc:
        raise Refused(reply.status, f"an answer that is not a grant: {exc}") from None


async def enroll(config: AgentConfig, options: EnrollmentOptions) -> EnrollmentGrant:
    """This node's credentials from the operator, written where `config` reads them."""
    cert_file, key_file = config.listen.tls_cert_file, config.listen.tls_key_file
    if cert_file is None or key_file is None:
        raise ValueError("enrollment gives a TLS certificate: set listen.tls_cert_file and "
                         "listen.tls_key_file")  # fmt: skip
    key = node_key(key_file)
    body = EnrollmentRequest(csr=signing_request(key, config.node_name), port=config.listen.port)
    delay = FIRST_RETRY_SECONDS
    while True:
        try:
            grant = await request_grant(options, body)
            break
        except (Refused, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("enrollment at %s failed (retrying in %.0f s): %s", options.url, delay,
                        exc)  # fmt: skip
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_RETRY_SECONDS)
    _write_private(config.token_file, grant.token + "\n")
    _write_private(cert_file, grant.certificate)
    log.info("enrolled as Hypervisor %s; the operator calls %s", grant.hypervisor, grant.endpoint)
    return grant
