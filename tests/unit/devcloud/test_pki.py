from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from stratus_devcloud import pki


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_everything_is_signed_by_one_ca_and_kept(tmp_path: Path) -> None:
    pki.ensure_pki(tmp_path)
    ca = load(tmp_path / "ca.crt")
    for spec in pki.CERTS:
        cert = load(tmp_path / f"{spec.name}.crt")
        assert cert.issuer == ca.subject
        cert.verify_directly_issued_by(ca)
        assert (tmp_path / f"{spec.name}.key").stat().st_mode & 0o077 == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    pki.ensure_pki(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_identities(tmp_path: Path) -> None:
    pki.ensure_pki(tmp_path)
    admin = load(tmp_path / "admin.crt").subject
    assert admin.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    serving = load(tmp_path / "apiserver.crt")
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert pki.LOOPBACK in sans.get_values_for_type(x509.IPAddress)
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
