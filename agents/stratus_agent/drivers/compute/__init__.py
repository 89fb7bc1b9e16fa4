"""Compute drivers: libvirt (the only module importing libvirt) and an in-memory fake."""
