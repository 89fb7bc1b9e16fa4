"""Enrollment: what an agent pod sends the operator to join the cluster, and what it gets.

The pod proves who it is with a projected ServiceAccount token (audience ENROLLMENT_AUDIENCE)
in the Authorization header, not in this body. It keeps its private key: it sends a CSR and
gets back a serving certificate for its node, the CA that signed it (which the operator
trusts for this node), and the bearer token the operator will call it with.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

ENROLLMENT_AUDIENCE = "stratus-operator"
ENROLLMENT_PATH = "/v1/enrollments"
# The label an admin puts on a node to make it a hypervisor; the operator checks it.
HYPERVISOR_LABEL = "stratus.io/hypervisor"
# The ServiceAccount token's claim naming the node its pod is bound to (Kubernetes 1.32+).
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
MAX_CSR_BYTES = 16 * 1024


class _Wire(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class EnrollmentRequest(_Wire):
    csr: str = Field(max_length=MAX_CSR_BYTES, description="PEM certificate signing request.")
    port: int = Field(ge=1, le=65535, description="The port the agent serves its API on.")


class EnrollmentGrant(_Wire):
    hypervisor: str = Field(description="The Hypervisor object this node is.")
    endpoint: str = Field(description="Where the operator calls this agent.")
    certificate: str = Field(description="PEM serving certificate for the node's address.")
    ca: str = Field(description="PEM CA certificate that signed it.")
    token: str = Field(description="The bearer token the operator sends this agent.")
