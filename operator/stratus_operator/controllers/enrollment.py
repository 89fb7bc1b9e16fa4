"""Who may enroll as a node, decided from plain data: the API server's TokenReview of the
agent pod's token and the Node it names. No I/O here (services/enrollment.py does it)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from stratus_api.enrollment_wire import HYPERVISOR_LABEL, NODE_NAME_EXTRA

ENROLLED_LABEL = "stratus.io/enrolled"


class Refused(Exception):
    """An enrollment that must not go ahead, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Enrollee:
    node: str
    address: str

    def endpoint(self, port: int) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{host}:{port}"


def reviewed_node(review: dict[str, Any], service_account: tuple[str, str]) -> str:
    """The node of the pod whose token this review accepted; Refused when the token is not
    the agent ServiceAccount's, or not bound to a pod on a node."""
    if not review.get("authenticated"):
        raise Refused(401, f"the token was not accepted: {review.get('error') or 'invalid'}")
    user = review.get("user") or {}
    wanted = f"system:serviceaccount:{service_account[0]}:{service_account[1]}"
    if user.get("username") != wanted:
        raise Refused(403, f"{user.get('username')} may not enroll; only {wanted} may")
    nodes = (user.get("extra") or {}).get(NODE_NAME_EXTRA) or []
    if len(nodes) != 1 or not nodes[0]:
        raise Refused(403, "the token names no node: send the pod's projected ServiceAccount "
                           "token, which is bound to the pod and its node")  # fmt: skip
    return str(nodes[0])


def enrollee(node: dict[str, Any] | None, name: str) -> Enrollee:
    """The node's name and the address the operator will call its agent at; Refused unless
    an admin labelled it a hypervisor."""
    if node is None:
        raise Refused(403, f"node {name} does not exist")
    labels = (node.get("metadata") or {}).get("labels") or {}
    if labels.get(HYPERVISOR_LABEL) != "true":
        raise Refused(403, f"node {name} is not labelled {HYPERVISOR_LABEL}=true")
    addresses = (node.get("status") or {}).get("addresses") or []
    for kind in ("InternalIP", "ExternalIP"):
        for address in addresses:
            if address.get("type") == kind:
                return Enrollee(name, str(ipaddress.ip_address(address["address"])))
    raise Refused(409, f"node {name} reports no InternalIP or ExternalIP address yet")


def hypervisor_body(enrolled: Enrollee, endpoint: str, secret: tuple[str, str]) -> dict[str, Any]:
    """A new Hypervisor for an enrolled node, its token in the node's Secret."""
    return {
        "apiVersion": "stratus.io/v1alpha1", "kind": "Hypervisor",
        "metadata": {"name": enrolled.node, "labels": {ENROLLED_LABEL: "true"}},
        "spec": {"endpoint": endpoint,
                 "tokenSecretRef": {"namespace": secret[0], "name": secret[1], "key": "token"}},
    }  # fmt: skip


def hypervisor_change(found: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch that points an enrolled Hypervisor at its agent again (`wanted`: the
    spec enrollment gives it); None when it does already. Refused for a Hypervisor that
    enrollment did not make (an admin's own)."""
    name = found["metadata"]["name"]
    if ((found["metadata"].get("labels") or {}).get(ENROLLED_LABEL)) != "true":
        raise Refused(409, f"Hypervisor {name} exists and was not made by enrollment; "
                           "delete it, or rename the node")  # fmt: skip
    spec = found.get("spec") or {}
    if all(spec.get(k) == v for k, v in wanted.items()):
        return None
    return {"spec": wanted}
