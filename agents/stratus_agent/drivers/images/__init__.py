"""The image store: download, verify, inspect and cache base images on the node."""
