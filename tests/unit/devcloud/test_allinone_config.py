"""The all-in-one's names and configuration, without starting it."""

from __future__ import annotations

import ipaddress
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from stratus_agent import config as agent_config
from stratus_api import sources
from stratus_cli import main as cli_main
from stratus_devcloud import allinone, controlplane, external
from stratus_devcloud.controlplane import ControlPlaneError
from testsupport import REPO_ROOT

EXAMPLE_IMAGE_URL = yaml.safe_load((REPO_ROOT / "examples" / "image.yaml").read_text())["spec"][
    "source"
]["http"]["url"]


def test_two_state_directories_get_their_own_bridge_and_node_files(tmp_path: Path) -> None:
    first, second = allinone.DevCloud(tmp_path / "a"), allinone.DevCloud(tmp_path / "b")
    assert first.bridge != second.bridge
    assert first.node_dir != second.node_dir
    for cloud in (first, second):
        assert len(cloud.bridge) <= 15 and cloud.bridge.startswith(allinone.BRIDGE_PREFIX)
        assert cloud.bridge != allinone.BRIDGE  # the name earlier versions shared
    # Stable: the same state directory names the same bridge from any process.
    assert allinone.DevCloud(tmp_path / "a").bridge == first.bridge


def test_the_recorded_names_are_the_ones_down_uses(tmp_path: Path) -> None:
    cloud = allinone.DevCloud(tmp_path / "dev")
    cloud._record_node()
    assert json.loads(cloud.node_record.read_text()) == {
        "bridge": cloud.bridge,
        "node_dir": str(cloud.node_dir),
        "external": {
            "physical_network": "external",
            "bridge": cloud.external_bridge,
            "host_gateway": str(cloud.external_gateway),
        },
    }
    # A cloud brought up under another naming scheme keeps the names it was given.
    cloud.node_record.write_text(json.dumps({"bridge": "br-old", "node_dir": "/var/lib/x"}))
    assert (cloud.bridge, cloud.node_dir) == ("br-old", Path("/var/lib/x"))
    # One brought up before it had an external network gets this version's names for it.
    assert cloud.external_bridge == external.bridge_name(cloud.digest)
    cloud.node_record.write_text(json.dumps({
        "bridge": "br-old", "node_dir": "/var/lib/x",
        "external": {"bridge": "br-ex-old", "host_gateway": "172.24.9.1/24"},
    }))  # fmt: skip
    assert cloud.external_bridge == "br-ex-old"
    assert str(cloud.external_gateway) == "172.24.9.1/24"


def test_each_state_directory_has_its_own_external_bridge_and_range(tmp_path: Path) -> None:
    clouds = [allinone.DevCloud(tmp_path / name) for name in ("a", "b", "c")]
    bridges = {cloud.external_bridge for cloud in clouds}
    integration = {node.bridge for cloud in clouds for node in cloud.nodes}
    assert len(bridges) == 3 and not bridges & integration
    for cloud in clouds:
        assert len(cloud.external_bridge) <= 15
        assert cloud.external_bridge.startswith(external.BRIDGE_PREFIX)
        # Not the default state directory: a /24 of 172.24.5-255, the host on .1.
        gateway = cloud.external_gateway
        assert gateway.network.prefixlen == 24 and gateway.ip == gateway.network[1]
        assert gateway.network.subnet_of(ipaddress.IPv4Network("172.24.0.0/16"))
        assert 5 <= gateway.ip.packed[2] <= 255
        # Stable: the same state directory names the same ones from any process.
        again = allinone.DevCloud(cloud.state_dir)
        assert (again.external_bridge, again.external_gateway) == (
            cloud.external_bridge,
            gateway,
        )
    # By digest, so two clouds may draw one /24 (1 in 251): `up` then refuses (below).


def test_the_default_state_directory_gets_devstacks_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    cloud = allinone.DevCloud(controlplane.default_state_dir())
    assert str(cloud.external_gateway) == "172.24.4.1/24"


def test_a_range_another_device_holds_is_refused_before_anything_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = {
        "lo": [ipaddress.IPv4Interface("127.0.0.1/8")],
        "stratusx-aaaaaa": [ipaddress.IPv4Interface("172.24.4.1/24")],
        "docker0": [ipaddress.IPv4Interface("172.24.0.1/16")],
        "stratusx-bbbbbb": [ipaddress.IPv4Interface("172.24.7.1/24")],
    }
    ran: list[tuple[str, ...]] = []
    monkeypatch.setattr(external, "_addresses", lambda: held)
    monkeypatch.setattr(external, "_run", lambda *argv, **kw: ran.append(argv))
    gateway = ipaddress.IPv4Interface("172.24.7.1/24")
    # Its own bridge's address is no clash (up again); another's, or a wider one, is.
    assert external.holders(gateway.network, besides="stratusx-bbbbbb") == [
        "docker0 (172.24.0.1/16)"
    ]
    with pytest.raises(external.ExternalNetworkError) as refused:
        external.ensure("stratusx-cccccc", gateway)
    message = str(refused.value)
    assert "172.24.7.0/24" in message and "docker0 (172.24.0.1/16)" in message
    assert "stratusx-bbbbbb (172.24.7.1/24)" in message and "--state-dir" in message
    assert ran == []


@pytest.fixture
def cloud(tmp_path: Path) -> allinone.DevCloud:
    return allinone.DevCloud(tmp_path / "dev")


def test_the_agent_config_is_explicit_about_tls_and_image_sources(
    cloud: allinone.DevCloud,
) -> None:
    settings = agent_config.AgentConfig.model_validate(cloud.agent_settings())
    assert settings.listen.insecure is False
    assert settings.listen.tls_cert_file == cloud.plane.pki_dir / "agent.crt"
    assert settings.network.bridge == cloud.bridge
    assert settings.network.physical_networks == {"external": cloud.external_bridge}
    policy = settings.images.sources
    ports = cloud.plane.ports
    assert policy.allowed_endpoints == ("127.0.0.1:8480",)
    assert set(policy.refused_ports) == {
        ports.etcd_client,
        ports.etcd_peer,
        ports.apiserver,
        cloud.agent_port,
        cloud.operator_metrics_port,
        cloud.console_port,
        cloud.prometheus.port,
    }
    assert_policy_fits_the_all_in_one(policy, cloud)


def assert_policy_fits_the_all_in_one(
    policy: sources.SourcePolicy, cloud: allinone.DevCloud
) -> None:
    # examples/image.yaml points at the image server: allowed.
    assert sources.check_url(policy, EXAMPLE_IMAGE_URL) == ("127.0.0.1", allinone.IMAGE_PORT)
    # The cloud's own services and the rest of loopback: refused.
    for port in cloud.service_ports():
        with pytest.raises(sources.SourceRefused):
            sources.check_url(policy, f"http://127.0.0.1:{port}/x")
    with pytest.raises(sources.SourceRefused):
        sources.check_url(policy, "http://127.0.0.1:9/x")


def test_the_operator_gets_the_same_image_policy(
    cloud: allinone.DevCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stratus_operator import main as operator_main  # noqa: PLC0415 - imports kopf

    seen: dict[str, Any] = {}
    monkeypatch.setattr(operator_main, "run", lambda settings, **kw: seen.update(s=settings))
    argv = cloud.operator.argv
    assert argv[1:3] == ("-m", "stratus_cli")
    # The operator's own kubeconfig (its chart ServiceAccount's token), as `up` writes it.
    cloud.operator_kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    cloud.operator_kubeconfig.write_text("{}")
    for pem in ("operator.crt", "operator.key"):  # as the control plane's PKI makes them
        (cloud.plane.pki_dir / pem).parent.mkdir(parents=True, exist_ok=True)
        (cloud.plane.pki_dir / pem).write_text("")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    result = CliRunner().invoke(cli_main.cli, list(argv[3:]))
    assert result.exit_code == 0, result.output
    # /metrics on loopback, over TLS with the cloud's CA, for its Prometheus.
    metrics = seen["s"].metrics
    assert metrics.enabled and metrics.host == "127.0.0.1"
    assert metrics.port == cloud.operator_metrics_port
    assert metrics.certificate.cert_file == str(cloud.plane.pki_dir / "operator.crt")
    console = seen["s"].console
    assert console.enabled and (console.host, console.port) == ("127.0.0.1", cloud.console_port)
    assert console.certificate.cert_file == metrics.certificate.cert_file
    policy = seen["s"].images.sources
    assert policy.allowed_endpoints == ("127.0.0.1:8480",)
    assert sorted(policy.refused_ports) == sorted(cloud.service_ports())
    assert_policy_fits_the_all_in_one(policy, cloud)


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--allow-image-endpoint", "127.0.0.1"], "expected HOST:PORT"),
        (["--refuse-image-port", "0"], "0 is not in the range"),
        (["--refuse-image-port", "http"], "is not a valid integer"),
    ],
)
def test_bad_image_policy_options_are_refused(args: list[str], complaint: str) -> None:
    result = CliRunner().invoke(cli_main.cli, ["operator", *args])
    assert result.exit_code == 2
    assert complaint in result.output


def test_each_node_of_a_several_node_cloud_has_its_own_names_ports_and_guest_users(
    tmp_path: Path,
) -> None:
    cloud = allinone.DevCloud(tmp_path / "dev", nodes=3)
    nodes = cloud.nodes
    assert [n.name for n in nodes] == ["local", "local-2", "local-3"]
    assert nodes[0].bridge == cloud.bridge  # node 1 keeps a one-node cloud's names
    assert len({n.bridge for n in nodes}) == 3 and all(len(n.bridge) <= 15 for n in nodes)
    assert len({cloud.port_of(n) for n in nodes}) == 3
    tunnel = {"local_ip": "10.250.0.2", "bridge": "br-tun", "ovsdb": "unix:/x/db.sock",
              "rundir": "/x", "link": {"int_port": "vi", "tun_port": "vt"}}  # fmt: skip
    configs = [agent_config.AgentConfig.model_validate(cloud.agent_settings(n, tunnel))
               for n in nodes]  # fmt: skip
    ranges = [range(c.isolation.uid_first, c.isolation.uid_first + c.isolation.uid_count)
              for c in configs]  # fmt: skip
    assert all(a.stop <= b.start for a, b in itertools.pairwise(ranges))
    assert len({c.state_dir for c in configs}) == 3
    assert configs[1].network.tunnel is not None
    # One external bridge, on the host's Open vSwitch, for every node: one L2 segment.
    assert all(c.network.physical_networks == {"external": cloud.external_bridge}
               for c in configs)  # fmt: skip
    assert str(configs[1].network.tunnel.local_ip) == "10.250.0.2"
    assert set(cloud.service_ports()) >= {cloud.port_of(n) for n in nodes}
    with pytest.raises(ControlPlaneError, match="--nodes"):
        allinone.DevCloud(tmp_path / "dev", nodes=allinone.MAX_NODES + 1)


def test_a_port_is_handed_out_once_even_when_the_kernel_offers_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cloud's ports are chosen before anything binds them: the kernel may offer the
    same free port twice, which once gave an agent and the console proxy one port."""
    offered = iter([47001, 47001, 47002])

    class Offering:
        def __enter__(self) -> Offering:
            return self

        def __exit__(self, *_: object) -> None:
            return None

        def bind(self, _address: object) -> None:
            self.port = next(offered)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(controlplane.socket, "socket", Offering)
    assert [controlplane.free_port(), controlplane.free_port()] == [47001, 47002]
