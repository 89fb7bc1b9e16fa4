"""Disk drivers: a guest's root disk from a cached image. file (qcow2 overlays) now; RBD and
LVM next.
"""
