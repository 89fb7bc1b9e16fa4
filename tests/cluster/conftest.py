"""A real Kubernetes API for the tests in this folder.

By default one local control plane (etcd + kube-apiserver + kube-controller-manager, built
from Go modules) is started for the whole session in a temporary state directory and stopped
at the end. With STRATUS_TEST_KUBECONFIG set, that cluster is used instead; the CRDs are
applied to it either way. Each test gets a namespace of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratus_devcloud import controlplane
from testsupport import REPO_ROOT, Cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    bin_dir = controlplane.kube_bin_dir()
    external = os.environ.get("STRATUS_TEST_KUBECONFIG")
    if external:
        found = Cluster(Path(external), bin_dir, None)
        controlplane.apply_and_establish_crds(
            lambda *args: found.kubectl(*args, check=False), REPO_ROOT / "crds"
        )
        yield found
        return
    plane = controlplane.LocalControlPlane(tmp_path_factory.mktemp("cluster"), bin_dir)
    try:
        plane.up(crd_dir=REPO_ROOT / "crds")
        yield Cluster(plane.kubeconfig, bin_dir, plane)
    finally:
        plane.down()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
