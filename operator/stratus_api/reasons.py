"""Condition types and reasons: the words a program switches on, shared by all components.

`GuestFailure` is why a guest failed on its node: the agent raises these, the operator copies
them into conditions and decides from them whether waiting can help (Reconciling, retried
with backoff) or only the user can (Stalled). `ConditionType` and `Reason` are what the
operator writes into the conditions of every kind. A condition's reason is a `Reason` or a
`GuestFailure` (`ConditionReason`); all are StrEnums, so they serialise as the plain strings
and compare equal to them.
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
    # A guest's Volume is not (yet) on its node: the operator may still be creating it.
    VOLUME_NOT_FOUND = "VolumeNotFound"
    # Another guest on the node holds the Volume; it heals when that one lets go.
    VOLUME_IN_USE = "VolumeInUse"
    # Making or growing a Volume's data failed on the node.
    VOLUME_CREATE_FAILED = "VolumeCreateFailed"
    # A Volume's data refers to files outside itself (a backing or data file): never used.
    VOLUME_HAS_EXTERNAL_REFERENCE = "VolumeHasExternalReference"
    # Hot-plugging a Volume's disk into the running guest failed; tried again.
    VOLUME_ATTACH_FAILED = "VolumeAttachFailed"
    # A Volume left the spec, but the running guest has not released its disk yet (it must
    # answer the ACPI eject; a paused guest cannot): it stays held until it does.
    VOLUME_DETACH_PENDING = "VolumeDetachPending"
    # Node plumbing (bridge, ports, libvirt) failed; the agent re-ensures and retries.
    NETWORK_SETUP_FAILED = "NetworkSetupFailed"
    # The node cannot serve a Volume's backend (no Ceph client libraries): only installing
    # them helps.
    BACKEND_UNSUPPORTED = "BackendUnsupported"
    AGENT_ERROR = "AgentError"
    # QEMU paused a guest nobody asked to pause (a disk I/O error, its watchdog, a panic):
    # said with the Paused state; it stays paused until restarted once the cause is fixed.
    PAUSED_ON_ERROR = "PausedOnError"


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
        GuestFailure.VOLUME_NOT_FOUND,
        GuestFailure.VOLUME_IN_USE,
        GuestFailure.VOLUME_ATTACH_FAILED,
        GuestFailure.VOLUME_DETACH_PENDING,
    }
)


def is_transient(reason: str) -> bool:
    """True for a failure that waiting can fix; unknown reasons count as transient."""
    try:
        return GuestFailure(reason) in TRANSIENT
    except ValueError:
        return True


class ConditionType(enum.StrEnum):
    """The `type` of the conditions Stratus writes (kstatus: Ready, Reconciling, Stalled)."""

    # The object is usable: an Instance's guest runs, an Image or Network can be used, a
    # Hypervisor's agent answers.
    READY = "Ready"
    # An Instance is placed on a node (status.node).
    SCHEDULED = "Scheduled"
    # Work is under way or being retried; False once settled ("abnormal-true").
    RECONCILING = "Reconciling"
    # Progress needs the user; False otherwise ("abnormal-true").
    STALLED = "Stalled"


class Reason(enum.StrEnum):
    """The `reason` of a condition the operator writes itself (the node's own failures are
    GuestFailure). One CamelCase word per situation, whatever the kind."""

    # -- Reconciling and Stalled when there is nothing to report -------------------------
    SETTLED = "Settled"  # Reconciling and Stalled False: nothing left to do
    PROGRESSING = "Progressing"  # Stalled False while Reconciling is True
    # -- Ready --------------------------------------------------------------------------------
    READY = "Ready"  # a Network instances can attach to
    SOURCE_REACHABLE = "SourceReachable"  # an Image whose source answers
    SOURCE_UNREACHABLE = "SourceUnreachable"  # an Image whose source does not (yet)
    AGENT_READY = "AgentReady"  # a Hypervisor whose agent answers
    AGENT_UNREACHABLE = "AgentUnreachable"  # a Hypervisor whose agent does not
    NODE_UNREACHABLE = "NodeUnreachable"  # an Instance whose Hypervisor does not answer
    # -- An Instance's guest, as its node reports it ------------------------------------------
    PROVISIONING = "Provisioning"
    GUEST_RUNNING = "GuestRunning"
    GUEST_STOPPED = "GuestStopped"
    GUEST_PAUSED = "GuestPaused"
    GUEST_RESTARTING = "GuestRestarting"  # down, and the node starts it again
    GUEST_CRASHED = "GuestCrashed"
    GUEST_FAILED = "GuestFailed"  # the node said Failed without a GuestFailure
    # -- Scheduling -----------------------------------------------------------------------
    SCHEDULED = "Scheduled"
    UNSCHEDULABLE = "Unschedulable"
    HYPERVISOR_GONE = "HypervisorGone"  # the node in status.node no longer exists
    # -- What the Instance refers to, or asks for ---------------------------------------------
    INVALID_SPEC = "InvalidSpec"  # the models refuse what admission accepted
    INSTANCE_TYPE_NOT_FOUND = "InstanceTypeNotFound"
    IMAGE_NOT_FOUND = "ImageNotFound"
    IMAGE_NOT_READY = "ImageNotReady"
    IMAGE_FAILED = "ImageFailed"
    NETWORK_NOT_FOUND = "NetworkNotFound"
    NETWORK_NOT_READY = "NetworkNotReady"  # an Instance's Network holds no segment
    NETWORK_IN_USE = "NetworkInUse"  # a Network's deletion waits for its Instances
    SEGMENT_IN_USE = "SegmentInUse"  # another Network holds the VLAN id, VNI or flat segment
    ADDRESS_UNAVAILABLE = "AddressUnavailable"
    # -- Routers ------------------------------------------------------------------------
    ROUTING = "Routing"  # a Router that routes on its node
    SUBNETS_OVERLAP = "SubnetsOverlap"  # two of a Router's Networks share addresses
    NO_GATEWAY = "NoGateway"  # a Router's Network has no subnet with a gateway
    NETWORK_NOT_EXTERNAL = "NetworkNotExternal"  # an external gateway on a Network that is not
    # -- FloatingIPs --------------------------------------------------------------------
    MAPPED = "Mapped"  # a FloatingIP its Router maps onto an Instance
    ALLOCATED = "Allocated"  # a FloatingIP held, leading nowhere (no spec.instance)
    ADDRESS_IN_USE = "AddressInUse"  # a FloatingIP's spec.address is someone else's
    POOL_EXHAUSTED = "PoolExhausted"  # no free address left on the external Network
    INSTANCE_NOT_FOUND = "InstanceNotFound"
    NIC_NOT_FOUND = "NicNotFound"  # spec.nic names no NIC of the Instance
    NO_ROUTER = "NoRouter"  # no Router joins the NIC's Network and leads out to the address's
    ROUTER_NOT_READY = "RouterNotReady"
    FIXED_ADDRESS_PENDING = "FixedAddressPending"  # the Instance's NIC has no address yet
    FIXED_ADDRESS_TAKEN = "FixedAddressTaken"  # another FloatingIP maps onto the same address
    # -- SecurityGroups -----------------------------------------------------------------
    ENFORCED = "Enforced"  # a SecurityGroup told to every node with a port in it
    GROUP_IN_OTHER_NAMESPACE = "GroupInOtherNamespace"  # a rule's remoteGroup is another's
    NODES_NOT_TOLD = "NodesNotTold"  # a node with a port in the group did not answer (yet)
    SECURITY_GROUP_IN_USE = "SecurityGroupInUse"  # a SecurityGroup's deletion waits for NICs
    USER_DATA_NOT_FOUND = "UserDataNotFound"
    USER_DATA_TOO_LARGE = "UserDataTooLarge"
    MEMORY_TOO_SMALL = "MemoryTooSmall"
    # The same words as the node's failures: the operator finds these out before asking it.
    DISK_TOO_SMALL = GuestFailure.DISK_TOO_SMALL.value
    VOLUME_NOT_FOUND = GuestFailure.VOLUME_NOT_FOUND.value  # an Instance names no Volume
    VOLUME_NOT_READY = "VolumeNotReady"  # an Instance waits for its Volume's data
    VOLUME_IN_USE = GuestFailure.VOLUME_IN_USE.value  # another Instance's, or blocks a delete
    VOLUMES_ON_DIFFERENT_NODES = "VolumesOnDifferentNodes"
    WAITING_FOR_FIRST_CONSUMER = "WaitingForFirstConsumer"  # a local Volume with no node yet
    NO_MATCHING_NODE = "NoMatchingNode"  # no Ready Hypervisor matches a Volume's nodeSelector
    SOURCE_NOT_READY = "SourceNotReady"  # a Volume's source Image or Volume is not ready
    SOURCE_NOT_FOUND = "SourceNotFound"
    BACKEND_UNSUPPORTED = GuestFailure.BACKEND_UNSUPPORTED.value
    INSUFFICIENT_STORAGE = "InsufficientStorage"  # the node's pool cannot hold the Volume
    VOLUME_CREATING = "VolumeCreating"
    VOLUME_AVAILABLE = "VolumeAvailable"
    VOLUME_EXTENDING = "VolumeExtending"
    VOLUME_FAILED = "VolumeFailed"  # the node said Failed without a GuestFailure
    VOLUME_HAS_SNAPSHOTS = "VolumeHasSnapshots"  # a Volume's deletion waits for them
    CEPH_POOL_NOT_FOUND = "CephPoolNotFound"  # a ceph Volume names no CephPool
    CEPH_KEY_NOT_FOUND = "CephKeyNotFound"  # a CephPool's Secret or key is missing
    CEPH_POOL_READY = "CephPoolReady"
    CEPH_POOL_IN_USE = "CephPoolInUse"  # a CephPool's deletion waits for its Volumes
    SNAPSHOT_CREATING = "SnapshotCreating"
    SNAPSHOT_READY = "SnapshotReady"
    SNAPSHOT_FAILED = "SnapshotFailed"  # the node said Failed without a GuestFailure
    # -- Talking to the node's agent ------------------------------------------------------
    AGENT_REJECTED = "AgentRejected"  # the agent refused the guest spec (4xx)
    AGENT_UNAUTHORIZED = "AgentUnauthorized"
    AGENT_UNAVAILABLE = "AgentUnavailable"  # unreachable, timeout, 5xx: retried
    AGENT_NOT_CONFIGURED = "AgentNotConfigured"


ConditionReason = Reason | GuestFailure
