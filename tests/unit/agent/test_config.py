"""Agent configuration: TLS unless plain HTTP is asked for explicitly, with clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from stratus_agent import config as agent_config
from stratus_agent import main as agent_main
from stratus_agent.drivers.images.cache import ImageCache
from stratus_agent.drivers.images.fake import FakeImageStore


def load(tmp_path: Path, text: str) -> agent_config.AgentConfig:
    path = tmp_path / "agent.yaml"
    path.write_text(f"token_file: {tmp_path / 'token'}\ncompute: fake\n{text}")
    return agent_config.load(path)


def test_without_a_listen_section_tls_files_are_required(tmp_path: Path) -> None:
    with pytest.raises(agent_config.ConfigError) as err:
        load(tmp_path, "")
    assert "listen: " in str(err.value)
    assert "tls_cert_file and tls_key_file are required (TLS is the default)" in str(err.value)
    assert "insecure: true" in str(err.value)


def test_a_port_alone_is_not_plain_http(tmp_path: Path) -> None:
    with pytest.raises(agent_config.ConfigError, match="tls_cert_file and tls_key_file"):
        load(tmp_path, "listen: {port: 9000}\n")


def test_tls_files_or_explicit_insecure(tmp_path: Path) -> None:
    tls = load(tmp_path, "listen: {tls_cert_file: /c.pem, tls_key_file: /k.pem}\n")
    assert not tls.listen.insecure and tls.listen.tls_cert_file == Path("/c.pem")
    plain = load(tmp_path, "listen: {insecure: true}\n")
    assert plain.listen.insecure


def test_insecure_with_tls_files_is_contradictory(tmp_path: Path) -> None:
    with pytest.raises(agent_config.ConfigError, match="insecure: true serves plain HTTP"):
        load(tmp_path, "listen: {insecure: true, tls_cert_file: /c.pem, tls_key_file: /k.pem}\n")


def test_recovery_and_isolation_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "listen: {insecure: true}\n")
    assert config.network.check_seconds == 30.0
    assert (config.recovery.restart_initial_seconds, config.recovery.restart_max_seconds) == (
        1.0,
        300.0,
    )
    assert config.recovery.restart_stable_seconds == 600.0
    assert (config.isolation.uid_first, config.isolation.uid_count) == (1_900_000_000, 65536)
    assert config.isolation.gid is None
    with pytest.raises(agent_config.ConfigError, match="must stay below 4294967295"):
        load(tmp_path, "listen: {insecure: true}\nisolation: {uid_first: 4294967000}\n")


async def test_plain_http_is_announced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("a-token-of-enough-length")
    token.chmod(0o600)
    config = load(
        tmp_path, f"state_dir: {tmp_path / 'state'}\nlisten: {{insecure: true, port: 0}}\n"
    )
    # serve() runs until a signal; stop it as soon as it serves.
    stopped: list[bool] = []

    class StopAtOnce:
        def set(self) -> None: ...

        async def wait(self) -> None:
            stopped.append(True)

    monkeypatch.setattr(agent_main.asyncio, "Event", StopAtOnce)
    caplog.set_level(logging.INFO)
    await agent_main.serve(config)
    assert stopped
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("plain HTTP on 127.0.0.1:0" in r.getMessage() for r in warnings)


def test_fake_compute_brings_fake_drivers_unless_a_section_names_one(tmp_path: Path) -> None:
    config = load(tmp_path, "listen: {insecure: true}\n")
    assert (config.images.driver, config.storage.driver, config.network.driver) == (
        "fake",
        "fake",
        "fake",
    )
    mixed = load(tmp_path, "listen: {insecure: true}\nstorage: {driver: file}\n")
    assert (mixed.storage.driver, mixed.network.driver) == ("file", "fake")


def test_real_compute_brings_real_drivers_and_refuses_fake_ones(tmp_path: Path) -> None:
    base = {"token_file": str(tmp_path / "token"), "listen": {"insecure": True}}
    config = agent_config.AgentConfig.model_validate(base)
    assert (config.images.driver, config.storage.driver, config.network.driver) == (
        "cache",
        "file",
        "ovs",
    )
    with pytest.raises(ValueError, match=r"storage\.driver, network\.driver: fake drivers"):
        agent_config.AgentConfig.model_validate(
            {**base, "storage": {"driver": "fake"}, "network": {"driver": "fake"}}
        )


async def test_build_wires_the_drivers_the_config_names(tmp_path: Path) -> None:
    text = f"state_dir: {tmp_path / 'state'}\nlisten: {{insecure: true}}\n"
    fake = await agent_main.build(load(tmp_path, text))
    try:
        assert isinstance(fake.images, FakeImageStore)
        assert fake.manager.compute.virt_type == "fake"
    finally:
        await fake.manager.stop()
    real_storage = await agent_main.build(
        load(tmp_path, text + "images: {driver: cache}\nstorage: {driver: file}\n")
    )
    try:
        assert isinstance(real_storage.images, ImageCache)
    finally:
        await real_storage.manager.stop()


def test_no_tunnel_by_default(tmp_path: Path) -> None:
    assert load(tmp_path, "listen: {insecure: true}\n").network.tunnel is None


def test_a_tunnel_with_patch_ports_on_the_default_ovs(tmp_path: Path) -> None:
    config = load(
        tmp_path, "listen: {insecure: true}\nnetwork: {tunnel: {local_ip: 2001:DB8::1}}\n"
    )
    tunnel = config.network.tunnel
    assert tunnel is not None
    assert (tunnel.local_ip, tunnel.bridge, tunnel.link, tunnel.ovsdb) == (
        "2001:db8::1",
        "br-tun",
        None,
        None,
    )


def test_a_tunnel_on_another_ovs_with_a_veth_link(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "listen: {insecure: true}\nnetwork:\n  tunnel:\n    local_ip: 10.1.2.3\n"
        "    ovsdb: unix:/run/n1/db.sock\n    rundir: /run/n1\n"
        "    link: {int_port: l1i, tun_port: l1t}\n",
    )
    tunnel = config.network.tunnel
    assert tunnel is not None and tunnel.link is not None
    assert (tunnel.link.int_port, tunnel.link.tun_port, tunnel.rundir) == (
        "l1i",
        "l1t",
        Path("/run/n1"),
    )


@pytest.mark.parametrize(
    ("tunnel", "message"),
    [
        (
            "{local_ip: 10.1.2.300}",
            "network.tunnel.local_ip: Value error, '10.1.2.300' is not an IPv4",
        ),
        (
            "{local_ip: 10.0.0.1, bridge: a-bridge-name-too-long}",
            "network.tunnel.bridge: String should match",
        ),
        ("{local_ip: 10.0.0.1, bridge: br-stratus}", "tunnel.bridge must differ from bridge"),
        ("{local_ip: 10.0.0.1, ovsdb: unix:/x/db.sock}", "ovsdb and rundir go together"),
        ("{local_ip: 10.0.0.1, ovsdb: unix:/x/db.sock, rundir: /x}", "needs a link"),
        (
            "{local_ip: 10.0.0.1, ovsdb: /x/db.sock, rundir: /x, link: {int_port: a, tun_port: b}}",
            "network.tunnel.ovsdb",
        ),
        ("{local_ip: 10.0.0.1, link: {int_port: a, tun_port: a}}", "two different ends"),
        (
            "{local_ip: 10.0.0.1, link: {int_port: a-veth-name-too-long, tun_port: b}}",
            "network.tunnel.link.int_port",
        ),
    ],
)
def test_bad_tunnel_settings_name_the_field(tmp_path: Path, tunnel: str, message: str) -> None:
    with pytest.raises(agent_config.ConfigError) as err:
        load(tmp_path, f"listen: {{insecure: true}}\nnetwork: {{tunnel: {tunnel}}}\n")
    assert message in str(err.value)
