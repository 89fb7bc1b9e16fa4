"""The local Ceph cluster: up and healthy, RBD for client.stratus through the Python
bindings, cephx enforced (a wrong key, another pool), and `down` leaves nothing running.

Clients connect the way the product will, with only the monitors, the user and the key (no
configuration or keyring file). The last test stops the session's cluster: keep it last.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import pytest

from stratus_devcloud import ceph, processes
from testsupport import processes_using

MiB = 1024**2
# What the monitor logs when cephx refuses a key (with a one-time challenge, not the key).
REFUSED = "cephx server client.stratus:  unexpected key"


def admin(cluster: ceph.CephCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """`ceph ARGS` as client.admin."""
    return subprocess.run(
        ["ceph", "-c", str(cluster.conf_path), "-n", "client.admin",
         "-k", str(cluster.admin_keyring_path), "--connect-timeout", "10", *args],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip


def admin_json(cluster: ceph.CephCluster, *args: str) -> Any:
    return json.loads(admin(cluster, *args, "-f", "json").stdout)


@contextmanager
def connected(
    rados: ModuleType, cluster: ceph.CephCluster, key: str | None = None, timeout: int = 15
) -> Iterator[Any]:
    client = rados.Rados(
        rados_id=cluster.user,
        conf={
            "mon_host": cluster.monitors,
            "key": cluster.key if key is None else key,
            # Rados.connect(timeout=...) is ignored (Pacific); this bounds the connect.
            "client_mount_timeout": str(timeout),
        },
    )
    try:
        client.connect()
        yield client
    finally:
        client.shutdown()


def test_cluster_is_up_with_one_osd_and_the_stratus_pool(ceph_cluster: ceph.CephCluster) -> None:
    health = admin(ceph_cluster, "health").stdout
    assert health.split()[0] in ("HEALTH_OK", "HEALTH_WARN"), health
    stat = admin_json(ceph_cluster, "osd", "stat")
    assert (stat["num_osds"], stat["num_up_osds"], stat["num_in_osds"]) == (1, 1, 1)
    pool = ceph_cluster.pool
    assert admin_json(ceph_cluster, "osd", "pool", "get", pool, "size")["size"] == 1
    assert admin_json(ceph_cluster, "osd", "pool", "get", pool, "min_size")["min_size"] == 1
    assert "rbd" in admin_json(ceph_cluster, "osd", "pool", "application", "get", pool)
    # Only the caps are compared: a failing assert would print the whole entry, key and all.
    [entry] = admin_json(ceph_cluster, "auth", "get", f"client.{ceph_cluster.user}")
    assert entry["caps"] == {"mon": "profile rbd", "osd": "profile rbd pool=stratus"}
    assert ceph_cluster.key not in repr(ceph_cluster)
    for secret in (ceph_cluster.keyring_path, ceph_cluster.admin_keyring_path):
        assert secret.stat().st_mode & 0o777 == 0o600


def test_up_again_finds_the_running_cluster(
    local_ceph: ceph.LocalCeph, ceph_cluster: ceph.CephCluster
) -> None:
    pids = {record.name: record.pid for record in processes.recorded(local_ceph.run_dir)}
    assert local_ceph.up() == ceph_cluster
    assert {record.name: record.pid for record in processes.recorded(local_ceph.run_dir)} == pids


def test_stratus_user_creates_resizes_and_removes_an_image(
    ceph_cluster: ceph.CephCluster, rados: ModuleType, rbd: ModuleType
) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    with connected(rados, ceph_cluster) as client, client.open_ioctx(ceph_cluster.pool) as ioctx:
        rbd.RBD().create(ioctx, name, 64 * MiB)
        try:
            with rbd.Image(ioctx, name) as image:
                assert image.size() == 64 * MiB
                image.resize(128 * MiB)
                image.write(b"grown", 100 * MiB)  # in the part the resize added
            with rbd.Image(ioctx, name, read_only=True) as image:
                assert image.size() == 128 * MiB
                assert image.read(100 * MiB, 5) == b"grown"
            assert name in rbd.RBD().list(ioctx)
        finally:
            rbd.RBD().remove(ioctx, name)
        assert name not in rbd.RBD().list(ioctx)


def test_a_wrong_key_is_refused(
    ceph_cluster: ceph.CephCluster, rados: ModuleType, local_ceph: ceph.LocalCeph
) -> None:
    wrong = subprocess.run(
        ["ceph-authtool", "--gen-print-key"], capture_output=True, text=True, check=True
    ).stdout.strip()
    mon_log = local_ceph.log_dir / "ceph-mon.log"
    refusals = mon_log.read_text().count(REFUSED)
    # Over msgr2 the monitor refuses each attempt and librados tries again until its mount
    # timeout: the connect fails with TimedOut rather than PermissionDeniedError.
    with pytest.raises(rados.Error), connected(rados, ceph_cluster, key=wrong, timeout=3):
        pass
    assert mon_log.read_text().count(REFUSED) > refusals, "the monitor saw and refused the key"
    with connected(rados, ceph_cluster, timeout=3) as client:  # the right key, same settings
        assert client.get_fsid() == ceph_cluster.fsid


def test_stratus_user_cannot_write_to_another_pool(
    ceph_cluster: ceph.CephCluster, rados: ModuleType, rbd: ModuleType
) -> None:
    admin(ceph_cluster, "osd", "pool", "create", "other", "8", "8")
    admin(ceph_cluster, "osd", "pool", "application", "enable", "other", "rbd")
    # The pool itself works: the admin writes to it.
    as_admin = rados.Rados(conffile=str(ceph_cluster.conf_path), rados_id="admin")
    with as_admin as client, client.open_ioctx("other") as ioctx:
        ioctx.write_full("by-admin", b"ok")
    with connected(rados, ceph_cluster) as client, client.open_ioctx("other") as ioctx:
        with pytest.raises(rados.PermissionError):
            ioctx.write_full("by-stratus", b"no")
        with pytest.raises(rbd.PermissionError):
            rbd.RBD().create(ioctx, "by-stratus", 64 * MiB)


# Last: stops the session's cluster (and starts it once more, from its kept data).
def test_down_leaves_no_process_of_the_state_dir(
    local_ceph: ceph.LocalCeph, ceph_cluster: ceph.CephCluster
) -> None:
    assert processes_using(local_ceph.dir), "the daemons name their configuration"
    assert sorted(local_ceph.down().stopped) == sorted(ceph.DAEMON_NAMES)
    assert processes_using(local_ceph.dir) == []
    assert local_ceph.running() == []
    # `up` after `down` starts the same cluster again (same fsid, key and data).
    assert local_ceph.up() == ceph_cluster
    assert admin_json(ceph_cluster, "osd", "stat")["num_up_osds"] == 1
    local_ceph.down()
    assert processes_using(local_ceph.dir) == []
