"""TLS for the operator's own HTTPS endpoints (enrollment, metrics)."""

from __future__ import annotations

import os
import ssl
import tempfile

from stratus_operator.controllers import authority as ca
from stratus_operator.services.settings import ServingCertificate


def serving_context(authority: ca.Authority, names: tuple[str, ...]) -> ssl.SSLContext:
    """A key of this process and a certificate for `names` (DNS names; the first is the
    subject), signed by `authority`."""
    key = ca.new_key()
    certificate = ca.issue(authority, key.public_key(), names[0], dns_names=names)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # ssl reads PEM from files only: a private directory, removed once loaded.
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "serving.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(ca.key_pem(key) + certificate)
        context.load_cert_chain(path)
    return context


def self_signed_context(names: tuple[str, ...]) -> ssl.SSLContext:
    """For an endpoint given no certificate, as Kubernetes components do then: signed by
    a throwaway CA of this process (scrapers skip verification, or are given one)."""
    return serving_context(ca.new_authority("stratus-operator (self-signed)"), names)


def files_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


def service_names(service: str, namespace: str) -> tuple[str, ...]:
    """The names a Service is reached by in the cluster, the full one first."""
    return (f"{service}.{namespace}.svc", f"{service}.{namespace}", service,
            f"{service}.{namespace}.svc.cluster.local")  # fmt: skip


def endpoint_context(
    certificate: ServingCertificate, authority: ca.Authority | None
) -> ssl.SSLContext:
    """An endpoint's certificate: the files given, else one from the enrollment CA (for
    the Service's names), else a self-signed one."""
    if certificate.cert_file:
        return files_context(certificate.cert_file, certificate.key_file)
    names = service_names(certificate.service, certificate.namespace)
    if authority is not None:
        return serving_context(authority, names)
    return self_signed_context(names)
