"""Errors the agent reports to the operator as a guest's reason and message."""

from __future__ import annotations


class ProvisioningError(Exception):
    """Node-side preparation failed in a way the user must fix (bad image, disk too small).

    `reason` is one CamelCase word the operator copies into the Instance's condition.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
