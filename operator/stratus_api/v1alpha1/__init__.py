"""stratus.io/v1alpha1: every Stratus kind, one module each."""

from stratus_api.v1alpha1.base import API_VERSION, GROUP, VERSION, Condition, Resource
from stratus_api.v1alpha1.cephpool import CephPool
from stratus_api.v1alpha1.floatingip import FloatingIP
from stratus_api.v1alpha1.hypervisor import Hypervisor
from stratus_api.v1alpha1.image import Image
from stratus_api.v1alpha1.instance import Instance
from stratus_api.v1alpha1.instancetype import InstanceType
from stratus_api.v1alpha1.network import Network
from stratus_api.v1alpha1.router import Router
from stratus_api.v1alpha1.securitygroup import SecurityGroup
from stratus_api.v1alpha1.volume import Volume
from stratus_api.v1alpha1.volumesnapshot import VolumeSnapshot

KINDS: tuple[type[Resource], ...] = (
    Image, Volume, VolumeSnapshot, Network, Router, FloatingIP, SecurityGroup, Instance,
    InstanceType, Hypervisor, CephPool,
)  # fmt: skip

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "CephPool",
    "Condition",
    "FloatingIP",
    "Hypervisor",
    "Image",
    "Instance",
    "InstanceType",
    "Network",
    "Resource",
    "Router",
    "SecurityGroup",
    "Volume",
    "VolumeSnapshot",
]
