"""The Stratus API as code: pydantic models of every resource, with their validation.

Plain data only. Nothing here reaches outside the process: no kopf, libvirt, aiohttp or
settings imports (an import-linter contract in pyproject.toml keeps it so).
"""
