"""The Stratus node agent: an HTTPS API over the compute, network, storage and image drivers.

Holds no Kubernetes credentials; the operator tells it what to ensure.
"""
