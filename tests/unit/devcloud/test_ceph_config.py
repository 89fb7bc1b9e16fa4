"""The local Ceph cluster's configuration and public record, without starting it."""

from __future__ import annotations

import configparser
from pathlib import Path

from stratus_devcloud import ceph


def read_conf(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def test_cephx_is_required_and_everything_stays_in_the_cluster_dir(tmp_path: Path) -> None:
    conf = read_conf(ceph.render_conf(tmp_path, "0c0ffee0-0000-4000-8000-000000000000", 40123))
    for option in ("auth_cluster_required", "auth_service_required", "auth_client_required"):
        assert conf["global"][option] == "cephx"
    assert conf["global"]["mon_host"] == "[v2:127.0.0.1:40123]"
    paths = [value for section in conf.sections() for value in conf[section].values()]
    for value in paths:
        if value.startswith("/"):
            assert value.startswith(str(tmp_path)), value


def test_the_osd_block_file_is_outside_its_data_dir(tmp_path: Path) -> None:
    osd = read_conf(ceph.render_conf(tmp_path, "fsid", 1))["osd"]
    data = Path(osd["osd_data"].replace("$cluster-$id", "ceph-0"))
    block = Path(osd["bluestore_block_path"].replace("$cluster-$id", "ceph-0"))
    assert data not in block.parents and block != data / "block"


def test_the_key_stays_out_of_the_record_s_repr(tmp_path: Path) -> None:
    cluster = ceph.CephCluster(
        fsid="f",
        monitors="127.0.0.1:1",
        pool=ceph.POOL,
        user=ceph.USER,
        key="AQBsecretsecretsecretsecretsecretsecret==",
        conf_path=tmp_path / "ceph.conf",
        keyring_path=tmp_path / "client.stratus.keyring",
        admin_keyring_path=tmp_path / "admin.keyring",
    )
    assert cluster.key not in repr(cluster) and cluster.key not in str(cluster)
    assert str(cluster.keyring_path) in repr(cluster)
