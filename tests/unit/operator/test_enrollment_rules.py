"""Who may enroll, and what the CA signs: plain data in, decisions out."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from stratus_agent.enrollment import signing_request
from stratus_operator.controllers import authority
from stratus_operator.controllers.enrollment import (
    Enrollee,
    Refused,
    enrollee,
    hypervisor_body,
    hypervisor_change,
    reviewed_node,
)

AGENT = ("stratus-system", "stratus-agent")


def review(
    username: str = "system:serviceaccount:stratus-system:stratus-agent",
    nodes: list[str] | None = None,
    authenticated: bool = True,
) -> dict[str, Any]:
    extra = {"authentication.kubernetes.io/node-name": nodes if nodes is not None else ["hv1"]}
    return {"authenticated": authenticated, "user": {"username": username, "extra": extra}}


def node(labels: dict[str, str], addresses: list[tuple[str, str]]) -> dict[str, Any]:
    return {"metadata": {"name": "hv1", "labels": labels},
            "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]}}  # fmt: skip


def test_the_agent_accounts_bound_token_names_its_node() -> None:
    assert reviewed_node(review(), AGENT) == "hv1"


@pytest.mark.parametrize(
    ("given", "status", "words"),
    [
        (review(authenticated=False), 401, "not accepted"),
        (review("system:serviceaccount:default:default"), 403, "only system:serviceaccount"),
        (review(nodes=[]), 403, "projected ServiceAccount token"),
        (review("alice"), 403, "alice may not enroll"),
    ],
)
def test_other_tokens_are_refused(given: dict[str, Any], status: int, words: str) -> None:
    with pytest.raises(Refused) as refused:
        reviewed_node(given, AGENT)
    assert refused.value.status == status and words in str(refused.value)


def test_a_labelled_node_is_reached_at_its_internal_address() -> None:
    found = enrollee(node({"stratus.io/hypervisor": "true"},
                          [("Hostname", "hv1"), ("ExternalIP", "198.51.100.1"),
                           ("InternalIP", "10.0.0.5")]), "hv1")  # fmt: skip
    assert found == Enrollee("hv1", "10.0.0.5")
    assert Enrollee("hv1", "fd00::5").endpoint(8441) == "https://[fd00::5]:8441"


@pytest.mark.parametrize(
    ("given", "words"),
    [
        (None, "does not exist"),
        (node({}, [("InternalIP", "10.0.0.5")]), "stratus.io/hypervisor=true"),
        (node({"stratus.io/hypervisor": "yes"}, [("InternalIP", "10.0.0.5")]), "labelled"),
        (node({"stratus.io/hypervisor": "true"}, [("Hostname", "hv1")]), "no InternalIP"),
    ],
)
def test_unlabelled_or_unreachable_nodes_are_refused(given: dict[str, Any] | None,
                                                     words: str) -> None:  # fmt: skip
    with pytest.raises(Refused, match=words):
        enrollee(given, "hv1")


def test_an_enrolled_hypervisor_is_repointed_and_an_admins_own_is_left_alone() -> None:
    body = hypervisor_body(Enrollee("hv1", "10.0.0.5"), "https://10.0.0.5:8441",
                           ("stratus-system", "stratus-agent-hv1"))  # fmt: skip
    assert hypervisor_change(body, body["spec"]) is None
    moved = {**body["spec"], "endpoint": "https://10.0.0.6:8441"}
    assert hypervisor_change(body, moved) == {"spec": moved}
    admins = {"metadata": {"name": "hv1"}, "spec": body["spec"]}
    with pytest.raises(Refused, match="not made by enrollment"):
        hypervisor_change(admins, body["spec"])


def test_the_ca_signs_the_requesters_key_with_the_operators_names_only() -> None:
    ca = authority.new_authority("test CA")
    key = ec.generate_private_key(ec.SECP256R1())
    # The requester asks for a name of its own choosing: it is not copied.
    asked = x509.SubjectAlternativeName([x509.DNSName("kubernetes.default.svc")])
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
           .add_extension(asked, critical=False).sign(key, hashes.SHA256()))  # fmt: skip
    pem = authority.sign_request(ca, csr.public_bytes(serialization.Encoding.PEM).decode(),
                                 "hv1", dns_names=("hv1",), ips=("10.0.0.5",))  # fmt: skip
    issued = x509.load_pem_x509_certificate(pem.encode())
    issued.verify_directly_issued_by(ca.certificate)
    assert issued.public_key() == key.public_key()
    names = issued.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert names.get_values_for_type(x509.DNSName) == ["hv1"]
    assert issued.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hv1"
    basic = issued.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    assert basic.ca is False


def test_a_request_that_is_not_a_valid_csr_is_refused() -> None:
    ca = authority.new_authority("test CA")
    with pytest.raises(authority.BadRequest, match="csr: not a PEM"):
        authority.sign_request(ca, "garbage", "hv1")
    good = signing_request(ec.generate_private_key(ec.SECP256R1()), "hv1")
    lines = good.splitlines()
    middle = len(lines) // 2  # one byte of the body flipped: the signature no longer holds
    lines[middle] = lines[middle][:-2] + ("A" if lines[middle][-2] != "A" else "B") + lines[
        middle][-1]  # fmt: skip
    with pytest.raises(authority.BadRequest):
        authority.sign_request(ca, "\n".join(lines) + "\n", "hv1")
