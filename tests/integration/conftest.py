"""A real one-node Ceph cluster (stratus_devcloud.ceph), made once per session in a fresh
state directory and stopped at the end (about 6 s to make on 2 cores). Here, above
tests/integration/ceph and tests/integration/agent, so a guest test uses the same cluster.

Skipped only when not root; missing Ceph tools or Python bindings fail, naming what to
install, since hack/install-deps installs them everywhere the suite runs.
"""

from __future__ import annotations

import importlib
import os
import sys
import uuid
from collections.abc import Iterator
from types import ModuleType

import pytest
from pydantic import SecretStr

from stratus_api.volume_wire import CephAccess
from stratus_devcloud import ceph


@pytest.fixture(scope="session")
def local_ceph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ceph.LocalCeph]:
    """The running cluster's owner: `up` already done, `down` at the end of the session."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the Ceph daemons run as root")
    missing = ceph.missing_tools()
    if missing:
        pytest.fail(f"Ceph tools not installed: {', '.join(missing)}; run hack/install-deps")
    local = ceph.LocalCeph(tmp_path_factory.mktemp("ceph-state"))
    try:
        local.up()
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def ceph_cluster(local_ceph: ceph.LocalCeph) -> ceph.CephCluster:
    return local_ceph.cluster()


def _binding(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(
            f"`import {name}` fails in {sys.executable} ({exc}): hack/install-deps installs "
            f"python3-{name} and links it into .venv"
        )


@pytest.fixture(scope="session")
def rados(ceph_cluster: ceph.CephCluster) -> ModuleType:
    """Ceph's `rados` module (after the root check, so non-root runs skip, not fail)."""
    return _binding("rados")


@pytest.fixture(scope="session")
def rbd(ceph_cluster: ceph.CephCluster) -> ModuleType:
    return _binding("rbd")


@pytest.fixture(scope="session")
def ceph_pool_uid() -> str:
    """The UID a CephPool object for the session's pool would have."""
    return str(uuid.uuid4())


@pytest.fixture
def ceph_access(local_ceph: ceph.LocalCeph, ceph_pool_uid: str) -> CephAccess:
    """How the operator would hand the session's pool to an agent. `up` first (a no-op when
    running): the last test of test_ceph_cluster stops the cluster."""
    cluster = local_ceph.up()
    return CephAccess(
        pool_uid=ceph_pool_uid,
        monitors=[cluster.monitors],
        pool=cluster.pool,
        user=cluster.user,
        key=SecretStr(cluster.key),
    )
