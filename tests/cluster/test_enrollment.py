"""Agent pods enroll at the operator's endpoint with their projected ServiceAccount token: a
real API server reviews the token and names the pod's node, and the node gets a certificate
for its own key, a token of its own and a Hypervisor; anyone else is refused, saying why."""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from stratus_agent import enrollment
from stratus_agent.config import AgentConfig
from stratus_api.enrollment_wire import ENROLLMENT_AUDIENCE, ENROLLMENT_PATH, EnrollmentRequest
from stratus_devcloud.controlplane import free_port
from testsupport import Cluster, stratus, wait_until

if TYPE_CHECKING:  # conftest names collide across folders in a full run
    from conftest import MakeOperator

NODE_IP = "192.0.2.77"
AGENT_PORT = 8441


@dataclass
class Site:
    cluster: Cluster
    namespace: str
    node: str
    url: str
    tmp: Path

    def token(self, account: str = "stratus-agent", audience: str = ENROLLMENT_AUDIENCE) -> Path:
        """A token for a pod of `account` on the node, as the kubelet projects it."""
        pod = f"{account}-{uuid.uuid4().hex[:6]}"
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": self.namespace},
            "spec": {"nodeName": self.node, "serviceAccountName": account,
                     "containers": [{"name": "agent", "image": "localhost/none"}]},
        }))  # fmt: skip
        made = self.cluster.kubectl("create", "token", account, "-n", self.namespace,
                                    "--audience", audience, "--bound-object-kind", "Pod",
                                    "--bound-object-name", pod).stdout.strip()  # fmt: skip
        path = self.tmp / f"{pod}.token"
        path.write_text(made)
        return path

    def options(self, token: Path) -> enrollment.EnrollmentOptions:
        return enrollment.EnrollmentOptions(
            self.url, f"stratus-operator.{self.namespace}.svc", self.tmp / "ca.crt", token
        )

    def config(self) -> AgentConfig:
        creds = self.tmp / "credentials"
        return AgentConfig.model_validate({
            "node_name": self.node, "token_file": str(creds / "token"),
            "listen": {"host": "0.0.0.0", "port": AGENT_PORT,
                       "tls_cert_file": str(creds / "tls.crt"),
                       "tls_key_file": str(creds / "tls.key")},
        })  # fmt: skip


@pytest.fixture
def site(cluster: Cluster, namespace: str, make_operator: MakeOperator, tmp_path: Path
         ) -> Iterator[Site]:  # fmt: skip
    port = free_port()
    node = f"hv-{uuid.uuid4().hex[:8]}"
    for account in ("stratus-agent", "intruder"):
        cluster.kubectl("create", "serviceaccount", account, "-n", namespace)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": {"stratus.io/hypervisor": "true"}},
    }))  # fmt: skip
    cluster.kubectl("patch", "node", node, "--subresource=status", "--type=merge", "-p",
                    json.dumps({"status": {"addresses": [
                        {"type": "Hostname", "address": node},
                        {"type": "InternalIP", "address": NODE_IP}]}}))  # fmt: skip
    operator = make_operator("operator", "--enrollment-port", str(port),
                             "--leader-election-namespace", namespace)  # fmt: skip
    operator.start()
    try:
        # The CA's certificate, as the kubelet would mount it from the operator's ConfigMap.
        ca = wait_until("the CA published", lambda: cluster.kubectl(
            "get", "configmap", "stratus-ca", "-n", namespace, "-o",
            "jsonpath={.data.ca\\.crt}", check=False).stdout, timeout=30)  # fmt: skip
        (tmp_path / "ca.crt").write_text(ca)
        yield Site(cluster, namespace, node, f"https://127.0.0.1:{port}", tmp_path)
    finally:
        operator.stop()
        cluster.kubectl("patch", "hypervisor", node, "--type=merge", "-p",
                        '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip
        cluster.kubectl("delete", "hypervisor,node", node, "--wait=false", check=False)
        log = operator.log.read_text()
        for token in site_tokens(tmp_path):
            assert token not in log, "a token reached the operator's log"


def site_tokens(directory: Path) -> list[str]:
    found = [p.read_text().strip() for p in directory.glob("*.token")]
    granted = directory / "credentials" / "token"
    return found + ([granted.read_text().strip()] if granted.exists() else [])


async def test_an_agent_pod_on_a_labelled_node_gets_credentials_of_its_own(site: Site) -> None:
    config = site.config()
    grant = await enrollment.enroll(config, site.options(site.token()))

    # The Hypervisor points at the node's address and the node's own Secret.
    found = site.cluster.get_json("hypervisor", site.node)
    secret_name = f"stratus-agent-{site.node}"
    assert found["spec"]["endpoint"] == f"https://{NODE_IP}:{AGENT_PORT}" == grant.endpoint
    assert found["spec"]["tokenSecretRef"] == {
        "namespace": site.namespace, "name": secret_name, "key": "token"}  # fmt: skip
    secret = site.cluster.get_json("secret", secret_name, "-n", site.namespace)["data"]
    assert base64.b64decode(secret["token"]).decode() == grant.token
    assert base64.b64decode(secret["ca.crt"]).decode() == grant.ca
    # Written where the agent reads them, for root only.
    assert config.token_file.read_text().strip() == grant.token
    for path in (config.token_file, config.listen.tls_cert_file, config.listen.tls_key_file):
        assert path is not None and path.stat().st_mode & 0o077 == 0, path

    # The certificate is for the node's address and name, for the key the node kept.
    assert config.listen.tls_cert_file is not None and config.listen.tls_key_file is not None
    certificate = x509.load_pem_x509_certificate(config.listen.tls_cert_file.read_bytes())
    names = certificate.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    assert [str(ip) for ip in names.value.get_values_for_type(x509.IPAddress)] == [NODE_IP]
    assert names.value.get_values_for_type(x509.DNSName) == [site.node]
    key = serialization.load_pem_private_key(config.listen.tls_key_file.read_bytes(), None)
    assert certificate.public_key() == key.public_key()
    ca = x509.load_pem_x509_certificate(grant.ca.encode())
    certificate.verify_directly_issued_by(ca)

    # A restarted agent enrolls again: same token, same Hypervisor, a fresh certificate.
    again = await enrollment.enroll(config, site.options(site.token()))
    assert again.token == grant.token and again.endpoint == grant.endpoint
    assert site.cluster.get_json("hypervisor", site.node)["metadata"]["generation"] == (
        found["metadata"]["generation"])  # fmt: skip


async def test_other_callers_are_refused_saying_why(site: Site) -> None:
    config = site.config()
    key = enrollment.node_key(site.tmp / "key.pem")
    request = EnrollmentRequest(csr=enrollment.signing_request(key, site.node), port=AGENT_PORT)

    async def refusal(token: Path, body: EnrollmentRequest = request) -> str:
        with pytest.raises(enrollment.Refused) as refused:
            await enrollment.request_grant(site.options(token), body)
        return str(refused.value)

    # A token for another audience (the API server's own, say) is not accepted.
    assert "HTTP 401" in await refusal(site.token(audience="https://kubernetes.default.svc"))
    # Another ServiceAccount's pod on the same node may not enroll.
    intruder = await refusal(site.token("intruder"))
    assert "HTTP 403" in intruder and f"system:serviceaccount:{site.namespace}:intruder" in intruder
    # A CSR that is not one.
    bad = EnrollmentRequest(csr="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", port=AGENT_PORT)
    assert "HTTP 422" in await refusal(site.token(), bad) and "csr" in await refusal(
        site.token(), bad)  # fmt: skip
    # No token at all.
    async with aiohttp.ClientSession() as session, session.post(
        site.url + ENROLLMENT_PATH, data=request.model_dump_json(),
        ssl=ssl.create_default_context(cafile=str(site.tmp / "ca.crt")),
        server_hostname=f"stratus-operator.{site.namespace}.svc",
    ) as reply:  # fmt: skip
        assert reply.status == 401
    # A node nobody labelled a hypervisor.
    site.cluster.kubectl("label", "node", site.node, "stratus.io/hypervisor-")
    unlabelled = await refusal(site.token())
    assert "HTTP 403" in unlabelled and "stratus.io/hypervisor=true" in unlabelled
    # None of these made anything.
    assert site.cluster.kubectl("get", "hypervisor", site.node, check=False).returncode != 0
    assert not config.token_file.exists()


async def test_forgetting_enrolled_nodes_leaves_an_admins_own_hypervisor(site: Site) -> None:
    await enrollment.enroll(site.config(), site.options(site.token()))
    admins = f"admins-{site.node}"
    site.cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Hypervisor", "metadata": {"name": admins},
        "spec": {"endpoint": "https://192.0.2.78:8441",
                 "tokenSecretRef": {"namespace": site.namespace, "name": "x"}},
    }))  # fmt: skip
    try:
        forgot = stratus("forget-enrolled-nodes", "--grace", "5", env=site.cluster.env)
        assert forgot.returncode == 0, forgot.stderr
        assert site.node in forgot.stdout
        assert site.cluster.kubectl("get", "hypervisor", site.node, check=False).returncode != 0
        assert site.cluster.kubectl("get", "hypervisor", admins, check=False).returncode == 0
    finally:
        site.cluster.kubectl("patch", "hypervisor", admins, "--type=merge", "-p",
                             '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip
        site.cluster.kubectl("delete", "hypervisor", admins, "--wait=false", check=False)
