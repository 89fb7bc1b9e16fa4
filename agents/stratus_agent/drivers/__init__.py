"""Drivers behind the narrow interfaces of stratus_agent.base, one concern a package, chosen
by configuration (stratus_agent.main). Sibling packages never import each other; formats
is below them all.
"""
