"""Libvirt domain XML: the builder (policy: spec + node facts -> domain) over the pure XML
element classes. Below the drivers; imports no driver.
"""
