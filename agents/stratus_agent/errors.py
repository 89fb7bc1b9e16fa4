"""Errors the agent reports to the operator as a guest's reason and message."""

from __future__ import annotations

from stratus_api.reasons import GuestFailure, is_transient


class ProvisioningError(Exception):
    """Node-side preparation failed. `reason` is the shared failure code the operator copies
    into the Instance's condition; `transient` says whether a retry can help."""

    def __init__(self, reason: GuestFailure, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def transient(self) -> bool:
        return is_transient(self.reason)
