"""The operator's certificate authority, as plain functions over PEM text: it signs each
node agent's serving certificate (from the agent's CSR: the key never leaves the node) and
the enrollment endpoint's own. Kept in a Secret by services/enrollment.py."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 365
# Clocks of nodes and operator may differ a little.
BACKDATE = datetime.timedelta(minutes=5)


_CA_USAGE = x509.KeyUsage(
    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
    key_encipherment=False, data_encipherment=False, key_agreement=False,
    encipher_only=False, decipher_only=False,
)  # fmt: skip


class BadRequest(ValueError):
    """A CSR that cannot be read or whose signature does not hold."""


@dataclass(frozen=True)
class Authority:
    certificate_pem: str
    key_pem: str

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate_pem.encode())

    def key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key is not an EC key")
        return key


def new_authority(name: str, now: datetime.datetime | None = None) -> Authority:
    now = now or datetime.datetime.now(datetime.UTC)
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(certificate.public_bytes(serialization.Encoding.PEM).decode(), key_pem(key))


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def checked_request(csr_pem: str) -> x509.CertificateSigningRequest:
    """The CSR, checked: readable PEM, self-signature valid, an EC or RSA key."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise BadRequest(f"csr: not a PEM certificate signing request ({exc})") from None
    try:
        valid = csr.is_signature_valid
    except (InvalidSignature, ValueError, TypeError):
        valid = False
    if not valid:
        raise BadRequest("csr: its signature does not match its key")
    return csr


def sign_request(
    authority: Authority, csr_pem: str, common_name: str,
    dns_names: tuple[str, ...] = (), ips: tuple[str, ...] = (),
) -> str:  # fmt: skip
    """A serving certificate for the CSR's key, with the names the operator chose: nothing
    the requester asked for beyond its key is copied."""
    key = checked_request(csr_pem).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise BadRequest("csr: the key must be an EC or RSA key")
    return issue(authority, key, common_name, dns_names, ips)


def issue(
    authority: Authority, key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, common_name: str,
    dns_names: tuple[str, ...] = (), ips: tuple[str, ...] = (),
    now: datetime.datetime | None = None,
) -> str:  # fmt: skip
    """A serving certificate for `key` under these names, signed by `authority`."""
    now = now or datetime.datetime.now(datetime.UTC)
    ca = authority.certificate
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key().public_key()),
            critical=False,
        )
    )
    certificate = builder.sign(authority.key(), hashes.SHA256())
    return certificate.public_bytes(serialization.Encoding.PEM).decode()
