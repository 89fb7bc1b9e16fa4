"""One all-in-one cloud for every e2e module: real control plane, OVS, libvirtd, TLS agent,
operator, and a one-node Ceph (the CephPool "default"). `stratus dev down` at the end must
leave no domain, bridge, process or file."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from allinone_kit import Cloud, virsh_domains

RUNS_LAST = "tests/e2e/test_rbac_audit.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The RBAC audit reads what every other e2e test made the operator do.
    items.sort(key=lambda item: item.nodeid.startswith(RUNS_LAST))


@pytest.fixture(scope="session")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    if os.environ.get("STRATUS_TEST_KUBECONFIG"):
        pytest.skip("the all-in-one test brings its own cluster and node")
    cloud = Cloud(tmp_path_factory.mktemp("allinone"))
    bridge = cloud.dev.bridge
    up = cloud.stratus("dev", "up", "--ceph")
    try:
        assert up.returncode == 0, up.stderr
        yield cloud
    finally:
        down = cloud.stratus("dev", "down")
        assert down.returncode == 0, down.stderr
    # Nothing left behind.
    assert virsh_domains() == []
    bridges = subprocess.run(["ovs-vsctl", "--timeout=5", "list-br"],
                             capture_output=True, text=True, check=False)  # fmt: skip
    # A non-zero exit: dev down stopped the OVS it started, so no bridge is left either.
    assert bridges.returncode != 0 or bridge not in bridges.stdout.split()
    assert not cloud.dev.node_dir.exists()
    assert cloud.dev.running() == []
