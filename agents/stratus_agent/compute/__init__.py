"""Compute drivers: turn guest specs into running guests (libvirt, or in memory)."""
