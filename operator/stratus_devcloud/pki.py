"""Certificates and keys for the local control plane, made with `cryptography`.

One CA signs everything: the API server's and etcd's serving certificates and the client
certificates of the admin, the API server (towards etcd) and the controller-manager. A
separate RSA key pair signs service-account tokens. Files are written once and reused, so a
cluster's kubeconfig stays valid across down/up.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=3650)
LOOPBACK = ipaddress.ip_address("127.0.0.1")
# First address of the service CIDR the API server is given: its in-cluster address.
SERVICE_IP = ipaddress.ip_address("10.96.0.1")
# The kubelet node (kubeletnode.py): its name, and its address on a local veth. TEST-NET-1,
# never routed, so nothing of it leaves the machine; the kubelet refuses loopback.
NODE_NAME = "stratus-node"
NODE_IP = ipaddress.ip_address("192.0.2.1")


@dataclass(frozen=True)
class CertSpec:
    name: str  # file stem in the pki directory
    common_name: str
    organization: str | None = None
    server: bool = False
    client: bool = False
    dns_names: tuple[str, ...] = ()
    ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()


CERTS = (
    CertSpec(
        "apiserver",
        "kube-apiserver",
        server=True,
        dns_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        # The node address: pods of the kubelet node reach the API server there.
        ips=(LOOPBACK, SERVICE_IP, NODE_IP),
    ),
    CertSpec("etcd-server", "etcd", server=True, dns_names=("localhost",), ips=(LOOPBACK,)),
    CertSpec("agent", "stratus-agent", server=True, dns_names=("localhost",), ips=(LOOPBACK,)),
    # The operator's /metrics.
    CertSpec(
        "operator", "stratus-operator", server=True, dns_names=("localhost",), ips=(LOOPBACK,)
    ),
    CertSpec("apiserver-etcd-client", "kube-apiserver-etcd-client", client=True),
    CertSpec("admin", "stratus-admin", organization="system:masters", client=True),
    CertSpec("controller-manager", "system:kube-controller-manager", client=True),
    CertSpec("scheduler", "system:kube-scheduler", client=True),
    # The built-in binding system:node-proxier names this user.
    CertSpec("proxy", "system:kube-proxy", client=True),
    # kubectl logs/exec: the API server calls the kubelet with this.
    CertSpec(
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        organization="system:masters",
        client=True,
    ),
    CertSpec("node", f"system:node:{NODE_NAME}", organization="system:nodes", client=True),
    CertSpec(
        "kubelet",
        NODE_NAME,
        server=True,
        dns_names=(NODE_NAME, "localhost"),
        ips=(LOOPBACK, NODE_IP),
    ),
)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: object) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _names_of(cert_path: Path) -> tuple[set[str], set[object]]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return set(sans.get_values_for_type(x509.DNSName)), set(
        sans.get_values_for_type(x509.IPAddress)
    )


def ensure_pki(directory: Path) -> None:
    """Create whatever is missing in `directory`; never replace what exists, but for a
    certificate whose names are not its spec's any more (a state directory made by an
    older version)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = directory / "ca.crt", directory / "ca.key"
    if not ca_cert_path.exists():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("stratus-dev-ca")
        ca_cert = (
            _builder(ca_name, ca_name, ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(ca_key_path, ca_key)
        ca_cert_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key_loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    assert isinstance(ca_key_loaded, ec.EllipticCurvePrivateKey)

    for spec in CERTS:
        cert_path = directory / f"{spec.name}.crt"
        if cert_path.exists() and _names_of(cert_path) == (set(spec.dns_names), set(spec.ips)):
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        usages = []
        if spec.server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if spec.client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            _builder(_name(spec.common_name, spec.organization), ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if spec.dns_names or spec.ips:
            sans: list[x509.GeneralName] = [x509.DNSName(n) for n in spec.dns_names]
            sans += [x509.IPAddress(ip) for ip in spec.ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key_loaded, hashes.SHA256())
        _write_key(directory / f"{spec.name}.key", key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    if not (directory / "sa.key").exists():
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (directory / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        _write_key(directory / "sa.key", sa_key)
