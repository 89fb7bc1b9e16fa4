"""A base image as the agent fetches it: used by guest root disks and by Volumes made from
an Image alike."""

from __future__ import annotations

from pydantic import Field

from stratus_api.naming import UID_PATTERN
from stratus_api.v1alpha1.base import ApiModel
from stratus_api.v1alpha1.image import DiskFormat


class ImageRef(ApiModel):
    """A base image the node fetches into its cache, keyed by the Image's UID."""

    uid: str = Field(pattern=UID_PATTERN, description="Image UID: names the cache entry.")
    name: str = Field(description="Image name, for messages.")
    url: str = Field(description="http(s) address to download from.")
    sha256: str | None = Field(default=None, description="Expected SHA-256, lowercase hex.")
    format: DiskFormat | None = Field(default=None, description="Expected format.")
