"""Brings guests to their specs: the GuestManager, the provisioner that composes the
drivers, recovery policy and per-guest users. Depends on the drivers' Protocols
(stratus_agent.base), never on libvirt.
"""
