"""`stratus`: one command for every Stratus process and developer task."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click

from stratus_api import crdgen
from stratus_devcloud import allinone, ceph, controlplane, external, pki, processes
from stratus_devcloud.nodeservices import NodeServiceError

REPO_ROOT = controlplane.REPO_ROOT
STATE_DIR_OPTION = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=controlplane.default_state_dir,
    show_default="~/.local/state/stratus/dev",
    help="Where the local cloud keeps its data, certificates, logs and kubeconfig.",
)


@click.group()
def cli() -> None:
    """Stratus: virtual machines on Kubernetes."""


@cli.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Agent configuration (YAML).",
)
@click.option(
    "--listen-host",
    default=None,
    help="Bind the API here instead of the configuration's listen.host (a pod's node IP).",
)
@click.option(
    "--node-name",
    default=None,
    help="This node's name instead of the configuration's node_name (a pod's spec.nodeName).",
)
@click.option(
    "--enroll",
    "enroll_url",
    default=None,
    metavar="URL",
    help="Get this node's token and TLS certificate from the operator's enrollment endpoint "
    "(https://HOST:PORT) before serving, as an agent pod does.",
)
@click.option(
    "--enroll-server-name",
    default="stratus-operator.stratus-system.svc",
    show_default=True,
    help="The name the endpoint's certificate must carry.",
)
@click.option(
    "--enroll-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("/etc/stratus/ca/ca.crt"),
    show_default=True,
    help="The CA certificate the operator publishes (its ConfigMap, mounted).",
)
@click.option(
    "--enroll-token",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("/var/run/secrets/stratus/token"),
    show_default=True,
    help="The pod's projected ServiceAccount token (audience stratus-operator).",
)
def agent(
    config_path: Path,
    listen_host: str | None,
    node_name: str | None,
    enroll_url: str | None,
    enroll_server_name: str,
    enroll_ca: Path,
    enroll_token: Path,
) -> None:
    """Run the node agent: the HTTPS API that runs guests on this node."""
    from stratus_agent import config as agent_config
    from stratus_agent import enrollment
    from stratus_agent import main as agent_main

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = agent_config.load(config_path)
        if listen_host is not None:
            listen = settings.listen.model_copy(update={"host": listen_host})
            settings = settings.model_copy(update={"listen": listen})
        if node_name is not None:
            settings = settings.model_copy(update={"node_name": node_name})
        if enroll_url is None:
            settings.read_token()
    except (agent_config.ConfigError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    options = (
        enrollment.EnrollmentOptions(enroll_url, enroll_server_name, enroll_ca, enroll_token)
        if enroll_url is not None
        else None
    )

    async def run() -> None:
        if options is not None:
            await enrollment.enroll(settings, options)
        await agent_main.serve(settings)

    try:
        asyncio.run(run())
    except (agent_config.ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command()
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    help="Watch only this namespace (repeatable). Default: the whole cluster.",
)
@click.option("--liveness-port", type=int, default=None, help="Serve /healthz on this port.")
@click.option(
    "--liveness-host",
    default="127.0.0.1",
    show_default=True,
    help="The address /healthz listens on (0.0.0.0 in a pod, for the kubelet's probe).",
)
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Use this kubeconfig (default: in-cluster service account, else KUBECONFIG).",
)
@click.option(
    "--allow-image-endpoint",
    "allowed_endpoints",
    multiple=True,
    metavar="HOST:PORT",
    help="Allow Image sources on exactly this host and port, even on a refused network "
    "such as loopback (repeatable).",
)
@click.option(
    "--refuse-image-port",
    "refused_ports",
    multiple=True,
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Refuse Image sources on this port: the cluster's own service ports (repeatable).",
)
@click.option(
    "--leader-elect",
    is_flag=True,
    help="Run as one of several replicas: reconcile only while holding the Lease "
    "stratus-operator (a standby takes over within 15 s of the leader's death).",
)
@click.option(
    "--leader-election-namespace",
    default=lambda: os.environ.get("POD_NAMESPACE") or "stratus-system",
    show_default="$POD_NAMESPACE, else stratus-system",
    help="The operator's namespace: its Lease, its enrollment CA and the nodes' Secrets.",
)
@click.option(
    "--enrollment-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve the endpoint agent pods enroll at (HTTPS) on this port; off by default.",
)
@click.option(
    "--enrollment-service",
    default="stratus-operator",
    show_default=True,
    help="The Service in front of that endpoint: its names go into the endpoint's certificate.",
)
@click.option(
    "--agent-service-account",
    default="stratus-agent",
    show_default=True,
    help="The ServiceAccount (in the operator's namespace) agent pods enroll with.",
)
@click.option(
    "--agent-daemonset",
    default="",
    help="The agents' DaemonSet, which then owns the nodes' Secrets and the CA.",
)
@click.option(
    "--ca-name",
    default="stratus-ca",
    show_default=True,
    help="The Secret keeping the enrollment CA, and the ConfigMap publishing its certificate.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics at https://HOST:PORT/metrics; off by default. Callers "
    "need get on the non-resource URL /metrics (as for kube-controller-manager's).",
)
@click.option(
    "--metrics-host", default="0.0.0.0", show_default=True, help="The address /metrics listens on."
)
@click.option(
    "--console-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve the console proxy (WebSockets of Instances' serial consoles and VNC, for "
    "callers with get on instances/console or instances/vnc) at https://HOST:PORT; off by "
    "default.",
)
@click.option(
    "--console-host", default="0.0.0.0", show_default=True, help="The address it listens on."
)
@click.option(
    "--dashboard/--no-dashboard",
    default=True,
    show_default=True,
    help="Serve the web dashboard on the console port, beside the console proxy.",
)
@click.option(
    "--dashboard-session-key-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="The key (32 bytes, raw or base64) sealing dashboard sessions, which every replica "
    "must share (default: a new one at start, so sessions end with the process).",
)
@click.option(
    "--event-qps",
    type=click.FloatRange(0, min_open=True),
    default=50.0,
    show_default=True,
    help="Kubernetes Events recorded per second at most (beyond --event-burst); the rest "
    "are dropped and counted in stratus_operator_events_dropped_total, as the kubelet's are.",
)
@click.option(
    "--event-burst",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="Events recorded at once before --event-qps applies.",
)
@click.option(
    "--tls-cert-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="PEM certificate for /metrics and the console proxy (default: from the enrollment "
    "CA when enrollment is on, else self-signed).",
)
@click.option(
    "--tls-key-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="PEM key of --tls-cert-file.",
)
def operator(
    namespaces: tuple[str, ...],
    liveness_port: int | None,
    liveness_host: str,
    kubeconfig: str | None,
    allowed_endpoints: tuple[str, ...],
    refused_ports: tuple[int, ...],
    leader_elect: bool,
    leader_election_namespace: str,
    enrollment_port: int | None,
    enrollment_service: str,
    agent_service_account: str,
    agent_daemonset: str,
    ca_name: str,
    metrics_port: int | None,
    metrics_host: str,
    console_port: int | None,
    console_host: str,
    dashboard: bool,
    dashboard_session_key_file: str | None,
    event_qps: float,
    event_burst: int,
    tls_cert_file: str | None,
    tls_key_file: str | None,
) -> None:
    """Run the operator: reconcile Stratus resources, dispatch guests to node agents."""
    import pydantic

    from stratus_api.sources import SourcePolicy

    try:
        sources = SourcePolicy(allowed_endpoints=allowed_endpoints, refused_ports=refused_ports)
    except pydantic.ValidationError as exc:
        bad = ", ".join(str(err["input"]) for err in exc.errors())
        raise click.BadParameter(
            f"{bad}: expected HOST:PORT", param_hint="--allow-image-endpoint"
        ) from None
    if bool(tls_cert_file) != bool(tls_key_file):
        raise click.BadParameter(
            "give both --tls-cert-file and --tls-key-file, or neither",
            param_hint="--tls-cert-file",
        )
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
    from stratus_operator import main as operator_main
    from stratus_operator.services.settings import (
        ConsoleSettings,
        EnrollmentSettings,
        EventSettings,
        ImageSettings,
        LeaderSettings,
        MetricsSettings,
        OperatorSettings,
        ServingCertificate,
    )

    # The operator's own namespace: its Lease, its CA, the nodes' Secrets.
    namespace = leader_election_namespace
    leader = LeaderSettings(enabled=leader_elect, namespace=namespace)
    enrollment = EnrollmentSettings(
        enabled=enrollment_port is not None,
        port=enrollment_port or EnrollmentSettings.port,
        namespace=namespace,
        ca_name=ca_name,
        service=enrollment_service,
        agent_service_account=(namespace, agent_service_account),
        agent_daemonset=agent_daemonset,
    )
    # /metrics and the console proxy are behind the enrollment endpoint's Service.
    certificate = ServingCertificate(
        cert_file=tls_cert_file or "", key_file=tls_key_file or "",
        service=enrollment_service, namespace=namespace,
    )  # fmt: skip
    metrics = MetricsSettings(
        enabled=metrics_port is not None,
        host=metrics_host,
        port=metrics_port or MetricsSettings.port,
        certificate=certificate,
    )
    console = ConsoleSettings(
        enabled=console_port is not None,
        host=console_host,
        port=console_port or ConsoleSettings.port,
        certificate=certificate,
        dashboard=dashboard,
        session_key_file=dashboard_session_key_file or "",
    )
    settings = OperatorSettings(
        namespaces=namespaces,
        images=ImageSettings(sources=sources),
        leader=leader,
        enrollment=enrollment,
        metrics=metrics,
        console=console,
        events=EventSettings(qps=event_qps, burst=event_burst),
    )
    liveness = (liveness_host, liveness_port) if liveness_port else None
    operator_main.run(settings, liveness=liveness)


@cli.command("forget-enrolled-nodes")
@click.option(
    "--grace",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="Seconds the operator has to let each go before its finalizers are removed.",
)
def forget_enrolled_nodes(grace: float) -> None:
    """Delete the Hypervisors that agent enrollment made (the chart's pre-delete hook: Helm
    removes only what it made itself)."""
    from stratus_operator import main as operator_main

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    names = operator_main.forget_enrolled_nodes(grace)
    click.echo(f"deleted Hypervisors: {', '.join(names) or 'none'}")


@cli.group()
def dev() -> None:
    """The all-in-one local cloud, for development and tests."""


@dev.command()
@STATE_DIR_OPTION
@click.option(
    "--control-plane-only",
    is_flag=True,
    help="Only etcd, kube-apiserver and kube-controller-manager: no node, agent or operator.",
)
@click.option(
    "--ceph",
    "with_ceph",
    is_flag=True,
    help="Also a one-node Ceph cluster with cephx (DIR/ceph): one monitor, one OSD on a "
    "sparse 4 GiB file, pool `stratus`, user client.stratus.",
)
@click.option(
    "--kubelet",
    "with_kubelet",
    is_flag=True,
    help=f"Also a real Kubernetes node, {pki.NODE_NAME}: containerd and a kubelet, "
    "with kube-scheduler, so Deployments and DaemonSets run (one per machine).",
)
@click.option(
    "--chart",
    "from_chart",
    is_flag=True,
    help="Run Stratus itself from its Helm chart on the kubelet node (implies --kubelet): "
    f"the operator and an agent as pods; the agent enrolls as Hypervisor {pki.NODE_NAME}. "
    "No agent or operator runs on the host.",
)
@click.option(
    "--nodes",
    type=click.IntRange(1, allinone.MAX_NODES),
    default=None,
    help="Nodes to simulate on this machine (default: as at the last up, else 1): node 1 is "
    "Hypervisor `local`, node K `local-K`, each with its own agent and bridge; with more "
    "than one, each has its own network namespace, Open vSwitch and tunnel endpoint, and "
    "overlay Networks span them over VXLAN.",
)
@click.option(
    "--no-prometheus",
    "without_prometheus",
    is_flag=True,
    help="Do not start Prometheus (by default it scrapes the operator and every agent, with "
    "the chart's alert rules, on a port printed at the end).",
)
def up(
    state_dir: Path, control_plane_only: bool, with_ceph: bool, with_kubelet: bool,
    from_chart: bool, nodes: int | None, without_prometheus: bool,
) -> None:  # fmt: skip
    """Start the local cloud (or find it running): the Kubernetes control plane with the
    CRDs, Open vSwitch and libvirtd, the external network's bridge with the host's address
    (physical network `external` on every node), one agent per node registered as
    Hypervisor `local` (and `local-2`...), the operator, and an HTTP server for the test
    image; with --ceph, then a one-node Ceph cluster registered as the CephPool `default`;
    with --kubelet, a kubelet node; with --chart, the kubelet node runs Stratus from its
    Helm chart instead of host processes.

    Prints the `export` lines for KUBECONFIG and PATH on stdout, so
    `eval "$(stratus dev up)"` sets up the calling shell.
    """
    if from_chart and (control_plane_only or (nodes or 1) > 1):
        raise click.UsageError("--chart runs one node, with its node services")
    cloud = allinone.DevCloud(state_dir, nodes)
    start = time.monotonic()
    try:
        if control_plane_only:
            cloud.plane.up(crd_dir=REPO_ROOT / "crds")
        elif from_chart:
            _up_from_chart(cloud)
        else:
            cloud.up(with_prometheus=not without_prometheus)
    except (controlplane.ControlPlaneError, NodeServiceError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"stratus dev: up in {time.monotonic() - start:.1f} s: API {cloud.plane.server_url}, "
        f"logs in {cloud.state_dir / 'logs'}",
        err=True,
    )
    if not control_plane_only:
        click.echo(
            f"stratus dev: external network: bridge {cloud.external_bridge}, host gateway "
            f"{cloud.external_gateway} (physical network {external.PHYSICAL_NETWORK})",
            err=True,
        )
    if not (control_plane_only or from_chart):
        click.echo(
            f"stratus dev: consoles through {cloud.console_url}: kubectl stratus console NAME "
            f'--token "$(kubectl create token {allinone.DEVELOPER})" (and vnc, start, stop, '
            "restart, pause, unpause)",
            err=True,
        )
    if not (control_plane_only or from_chart or without_prometheus):
        click.echo(
            f"stratus dev: Prometheus at {cloud.prometheus.url} (alerts at "
            f"{cloud.prometheus.url}/alerts), scraping the operator and every agent",
            err=True,
        )
    if with_kubelet and not from_chart:
        try:
            ready = cloud.kubelet.up()
        except controlplane.ControlPlaneError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(
            f"stratus dev: node {pki.NODE_NAME} Ready {ready:.1f} s after its kubelet "
            f"started (containerd and kubelet logs in {cloud.state_dir / 'logs'})",
            err=True,
        )
    if with_ceph:
        start = time.monotonic()
        try:
            cluster = cloud.up_ceph()
        except (ceph.CephError, controlplane.ControlPlaneError) as exc:
            raise click.ClickException(str(exc)) from exc
        # The key's file, never the key.
        click.echo(
            f"stratus dev: ceph up in {time.monotonic() - start:.1f} s: monitors "
            f"{cluster.monitors}, pool {cluster.pool}, client.{cluster.user}'s key in "
            f"{cluster.keyring_path}, conf {cluster.conf_path}; CephPool default",
            err=True,
        )
    click.echo(f"export KUBECONFIG={cloud.plane.kubeconfig}")
    click.echo(f"export PATH={cloud.plane.user_bin_dir}:$PATH")
    if not (control_plane_only or from_chart):
        click.echo(f"export STRATUS_CONSOLE_SERVER={cloud.console_url}")
        click.echo(f"export STRATUS_CONSOLE_CA={cloud.plane.pki_dir / 'ca.crt'}")
        click.echo(
            f"stratus dev: dashboard at {cloud.console_url}/ (its CA: "
            f"{cloud.plane.pki_dir / 'ca.crt'}); sign in with the token that "
            f"`kubectl create token {allinone.DEVELOPER} -n default` prints",
            err=True,
        )


def _up_from_chart(cloud: allinone.DevCloud) -> None:
    from stratus_devcloud import incluster

    try:
        took = incluster.up(cloud)
    except subprocess.CalledProcessError as exc:
        command = shlex.join(map(str, exc.cmd))
        raise click.ClickException(f"{command} failed:\n{exc.stderr}") from None
    click.echo(
        f"stratus dev: node {pki.NODE_NAME} Ready {took.kubelet_ready:.1f} s after its kubelet "
        f"started; images ready in {took.images:.0f} s; chart {allinone.CHART.name} installed "
        f"as {incluster.RELEASE} in {incluster.NAMESPACE} and Ready in {took.install:.0f} s "
        f"(Hypervisor {pki.NODE_NAME} enrolled; Images from http://{incluster.IMAGE_ENDPOINT}/)",
        err=True,
    )


@dev.command()
@STATE_DIR_OPTION
def down(state_dir: Path) -> None:
    """Stop the local cloud: delete its guests, bridges and node files, stop every process it
    started. Kubernetes data stays in the state directory for the next `up`.

    Needs nothing of the environment `up` ran in: what to stop comes from the records `up`
    wrote in the state directory, and a process they do not prove ours is left alone."""
    cloud = allinone.DevCloud(state_dir)
    if not cloud.run_dir.exists() and not cloud.node_record.exists():
        click.echo(f"stratus dev: nothing running in {cloud.state_dir}", err=True)
        return
    report = cloud.down()
    for note in report.notes:
        click.echo(f"stratus dev: {note}", err=True)
    click.echo(f"stratus dev: stopped {', '.join(report.stopped) or 'nothing'}", err=True)


@dev.command()
@STATE_DIR_OPTION
@click.argument("instance")
@click.option("--namespace", "-n", default="default", show_default=True)
@click.option("--lines", default=20, show_default=True)
def console(state_dir: Path, instance: str, namespace: str, lines: int) -> None:
    """Print the end of an Instance's serial console log (on this all-in-one node)."""
    cloud = allinone.DevCloud(state_dir)
    try:
        text = cloud.console_log(namespace, instance)
    except controlplane.ControlPlaneError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("\n".join(text.splitlines()[-lines:]))


@dev.command()
@STATE_DIR_OPTION
def status(state_dir: Path) -> None:
    """Say which processes of the local cloud run (from the records `up` wrote in the state
    directory); exit 1 when the API is not ready."""
    cloud = allinone.DevCloud(state_dir)
    plane = cloud.plane
    if not (plane.state_dir / "ports.json").exists():
        click.echo(f"no local cloud in {plane.state_dir}")
        sys.exit(1)
    records = {record.name: record for record in processes.recorded(cloud.run_dir)}
    for name in dict.fromkeys([*controlplane.DAEMON_NAMES, *allinone.APP_NAMES, *records]):
        record = records.get(name)
        state = record.state() if record else processes.State.NO_RECORD
        if record and state is processes.State.RUNNING:
            shown = f"running, pid {record.pid}"
        elif record and state is processes.State.NOT_OURS:
            shown = f"stopped (pid {record.pid} now belongs to another process)"
        else:
            shown = "stopped"
        click.echo(f"{name:<26} {shown}")
    if cloud.node_record.exists():
        click.echo(f"{'bridge':<26} {cloud.bridge}")
        click.echo(f"{'external network':<26} {cloud.external_bridge} {cloud.external_gateway}")
        click.echo(f"{'node files':<26} {cloud.node_dir}")
    ready = plane.ready()
    click.echo(f"{'API ' + plane.server_url:<26} {'ready' if ready else 'not ready'}")
    sys.exit(0 if ready else 1)


@dev.command("images")
@STATE_DIR_OPTION
@click.option(
    "--import",
    "into_node",
    is_flag=True,
    help=f"Import them into the containerd of the kubelet node ({pki.NODE_NAME}) that "
    "`stratus dev up --kubelet` started.",
)
def build_images(state_dir: Path, into_node: bool) -> None:
    """Build the operator and agent images offline (Debian packages with mmdebstrap, the
    project's wheel and its dependencies at .venv's versions, packed with umoci) into OCI
    archives in the cache; print each one's name, archive, size and build time."""
    from stratus_devcloud import images

    built = []
    for recipe in images.RECIPES.values():
        try:
            done = images.build(recipe)
        except subprocess.CalledProcessError as exc:
            raise click.ClickException(
                f"image {recipe.name}: {shlex.join(map(str, exc.cmd))} failed:\n{exc.stderr}"
            ) from exc
        except FileNotFoundError as exc:
            raise click.ClickException(
                f"image {recipe.name}: {exc.filename} is not installed (hack/install-deps "
                "installs it)"
            ) from exc
        built.append(done)
        took = f"built in {done.seconds:.0f} s" if done.seconds else "cached"
        click.echo(f"{done.reference:<36} {done.size / 2**20:6.0f} MiB  {took:<16} {done.archive}")
    if into_node:
        cloud = allinone.DevCloud(state_dir)
        for done in built:
            cloud.kubelet.import_image(done.archive, done.reference)
        click.echo(f"imported into {pki.NODE_NAME}'s containerd", err=True)


CRD_DIRS = (REPO_ROOT / "crds", REPO_ROOT / "charts" / "stratus" / "crds")


@dev.command("gen-crds")
@click.option(
    "--output",
    "outputs",
    type=click.Path(file_okay=False, path_type=Path),
    multiple=True,
    default=CRD_DIRS,
    show_default="crds/ and the chart's charts/stratus/crds/",
)
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if the files differ.")
def gen_crds(outputs: tuple[Path, ...], check: bool) -> None:
    """Generate the CustomResourceDefinitions from the stratus_api models."""
    if check:
        stale = {output: crdgen.diff(output) for output in outputs}
        if any(stale.values()):
            shown = "; ".join(f"{o}: {', '.join(names)}" for o, names in stale.items() if names)
            raise click.ClickException(f"out of date: {shown}; run `stratus dev gen-crds`")
        click.echo(f"{', '.join(map(str, outputs))} up to date")
        return
    for output in outputs:
        for path in crdgen.write(output):
            click.echo(f"wrote {path}")
