"""Why a guest failed on its node: the agent's failure codes, shared with the operator.

The agent raises these, the operator copies them into conditions and decides from them
whether waiting can help (Reconciling, retried with backoff) or only the user can (Stalled).
"""

from __future__ import annotations

import enum


class GuestFailure(enum.StrEnum):
    # The image itself is bad: the Image fails, every Instance using it stalls.
    IMAGE_CHECKSUM_MISMATCH = "ImageChecksumMismatch"
    IMAGE_FORMAT_MISMATCH = "ImageFormatMismatch"
    IMAGE_UNREADABLE = "ImageUnreadable"
    IMAGE_HAS_EXTERNAL_REFERENCE = "ImageHasExternalReference"
    IMAGE_FORMAT_UNSUPPORTED = "ImageFormatUnsupported"
    IMAGE_TOO_LARGE = "ImageTooLarge"
    IMAGE_SOURCE_REFUSED = "ImageSourceRefused"
    # The source answered, but not with the image: a 4xx other than 408/429, a redirect
    # loop. Only a corrected URL or server helps.
    IMAGE_SOURCE_ERROR = "ImageSourceError"
    # The download did not complete (timeout, reset, 5xx): worth another try.
    IMAGE_DOWNLOAD_FAILED = "ImageDownloadFailed"
    # The node lacks room now; space may be freed.
    NODE_STORAGE_FULL = "NodeStorageFull"
    # The Instance asks for what this node cannot give.
    DISK_TOO_SMALL = "DiskTooSmall"
    BOOT_VOLUME_UNSUPPORTED = "BootVolumeUnsupported"
    # Node plumbing (bridge, ports, libvirt) failed; the agent re-ensures and retries.
    NETWORK_SETUP_FAILED = "NetworkSetupFailed"
    AGENT_ERROR = "AgentError"


# Failures of the image file: the operator marks the Image Failed with the node's message.
IMAGE_FAILURES = frozenset(
    {
        GuestFailure.IMAGE_CHECKSUM_MISMATCH,
        GuestFailure.IMAGE_FORMAT_MISMATCH,
        GuestFailure.IMAGE_UNREADABLE,
        GuestFailure.IMAGE_HAS_EXTERNAL_REFERENCE,
        GuestFailure.IMAGE_FORMAT_UNSUPPORTED,
        GuestFailure.IMAGE_TOO_LARGE,
        GuestFailure.IMAGE_SOURCE_REFUSED,
        GuestFailure.IMAGE_SOURCE_ERROR,
    }
)

# Failures that can heal by themselves: the agent retries them with backoff.
TRANSIENT = frozenset(
    {
        GuestFailure.IMAGE_DOWNLOAD_FAILED,
        GuestFailure.NODE_STORAGE_FULL,
        GuestFailure.NETWORK_SETUP_FAILED,
        GuestFailure.AGENT_ERROR,
    }
)


def is_transient(reason: str) -> bool:
    """True for a failure that waiting can fix; unknown reasons count as transient."""
    try:
        return GuestFailure(reason) in TRANSIENT
    except ValueError:
        return True
