"""Names of everything Stratus creates on a node, derived from resource UIDs.

A retry, a restarted operator or a restarted agent computes the same names, so it finds what
an earlier attempt made instead of making a second one.
"""

from __future__ import annotations

import re
import uuid

DOMAIN_PREFIX = "stratus-"
# Linux interface names hold at most 15 characters.
IFNAME_MAX = 15
# A Kubernetes UID (RFC 4122 text). Everything on a node is named from one, so anything
# else (a path, `../../etc`) is refused before it can become a file name.
UID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_UID = re.compile(UID_PATTERN)


def is_uid(text: str) -> bool:
    return bool(_UID.fullmatch(text))


def _checked(uid: str) -> str:
    if not _UID.fullmatch(uid):
        raise ValueError(f"{uid!r} is not a Kubernetes UID")
    return uid


def domain_name(instance_uid: str) -> str:
    """libvirt domain of an Instance."""
    return f"{DOMAIN_PREFIX}{_checked(instance_uid)}"


def instance_uid_of_domain(name: str) -> str | None:
    """The Instance UID a domain name carries, or None for a domain Stratus did not make."""
    if not name.startswith(DOMAIN_PREFIX):
        return None
    uid = name.removeprefix(DOMAIN_PREFIX)
    return uid if _UID.fullmatch(uid) else None


def root_disk_file(instance_uid: str) -> str:
    """Copy-on-write overlay holding an Instance's root disk."""
    return f"{_checked(instance_uid)}-root.qcow2"


def seed_iso_file(instance_uid: str) -> str:
    """cloud-init NoCloud seed ISO of an Instance."""
    return f"{_checked(instance_uid)}-seed.iso"


def console_log_file(instance_uid: str) -> str:
    return f"{_checked(instance_uid)}-console.log"


def image_cache_file(image_uid: str) -> str:
    """Base image in the node's image cache."""
    return f"{_checked(image_uid)}.img"


def volume_file(volume_uid: str) -> str:
    """A file-backed Volume's data: a standalone qcow2."""
    return f"{_checked(volume_uid)}.qcow2"


def snapshot_file(snapshot_uid: str) -> str:
    """A file-backed VolumeSnapshot's data: a standalone qcow2 copy of its Volume's."""
    return f"{_checked(snapshot_uid)}.qcow2"


# RBD: images in a Ceph pool that many nodes share, so the names carry the resource's kind.
RBD_BASE_SNAPSHOT = "base"  # the protected snapshot of an imported Image that volumes clone
# Fixed: a pool's libvirt secret must get the same UUID on every node and after restarts.
_CEPH_SECRET_NAMESPACE = uuid.UUID("6e9f87b2-5ccd-45dd-9fe2-d64adefe1689")


def rbd_volume(volume_uid: str) -> str:
    """A ceph-backed Volume's RBD image."""
    return f"volume-{_checked(volume_uid)}"


def rbd_snapshot(snapshot_uid: str) -> str:
    """A ceph-backed VolumeSnapshot: an RBD snapshot of its Volume's image."""
    return f"snap-{_checked(snapshot_uid)}"


def lvm_volume(volume_uid: str) -> str:
    """An lvm-backed Volume's thin logical volume."""
    return f"volume-{_checked(volume_uid)}"


def lvm_snapshot(snapshot_uid: str) -> str:
    """An lvm-backed VolumeSnapshot: a thin snapshot of its Volume's logical volume."""
    return f"snap-{_checked(snapshot_uid)}"


def rbd_image(image_uid: str) -> str:
    """An Image imported once into a pool; volumes are clones of its `base` snapshot."""
    return f"image-{_checked(image_uid)}"


def ceph_secret_uuid(pool_uid: str) -> str:
    """The libvirt secret holding the cephx key of one CephPool, the same on every node."""
    return str(uuid.uuid5(_CEPH_SECRET_NAMESPACE, _checked(pool_uid)))


def ceph_secret_usage(user: str, pool_uid: str) -> str:
    """That secret's usage name (libvirt keeps one secret per usage name)."""
    return f"stratus client.{user} {_checked(pool_uid)}"


def tap_name(instance_uid: str, index: int) -> str:
    """Host-side interface (and OVS port) of an Instance's NIC number `index`."""
    if not 0 <= index <= 9:
        raise ValueError(f"NIC index {index} out of range 0-9")
    name = f"st{_checked(instance_uid).replace('-', '')[:12]}{index}"
    assert len(name) <= IFNAME_MAX
    return name
