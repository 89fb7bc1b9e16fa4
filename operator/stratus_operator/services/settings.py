"""Operator settings: one frozen dataclass per concern, built once at startup, passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from stratus_api.sources import SourcePolicy

GROUP = "stratus.io"
FINALIZER = "stratus.io/finalizer"


@dataclass(frozen=True)
class AgentSettings:
    # Seconds between health checks of each agent; also how stale a Ready condition can be.
    health_interval_seconds: float = 10.0
    # Seconds one agent request may take; a guest PUT returns within the agent's answer
    # window (answer_within_seconds, 0.5 s), so this bounds slow nodes only.
    request_timeout_seconds: float = 30.0
    # Seconds without a line on the event stream before it counts as dead (agents send a
    # heartbeat every 10 s by default).
    event_idle_timeout_seconds: float = 35.0
    # Seconds between reconnections of an event stream: doubling from the first to the
    # second, back to the first after a stream that delivered anything.
    watch_backoff_seconds: tuple[float, float] = (0.5, 10.0)


@dataclass(frozen=True)
class SchedulingSettings:
    # Seconds before an unschedulable Instance is tried again (capacity may have appeared).
    retry_seconds: float = 5.0
    # Seconds between updates of a Network's status.allocated (one write per change, not
    # one per NIC: a burst of Instances costs the Network one patch).
    network_count_seconds: float = 10.0
    # Seconds between checks of which nodes host each Network (a new peer is told within
    # this), and between full resends of every node's share (a node that lost it gets it).
    network_peers_seconds: float = 1.0
    network_resync_seconds: float = 60.0


@dataclass(frozen=True)
class ApiSettings:
    # Requests to the API server in flight at once, kopf's and the operator's own (one
    # kept-alive connection each); kopf's watches get theirs on top.
    connections: int = 32


@dataclass(frozen=True)
class WatchSettings:
    # Seconds the API server keeps a watch open before kopf opens it again, and how long
    # kopf waits for a silent one: bounded, so watches stay fresh.
    server_timeout_seconds: int = 300
    client_timeout_seconds: float = 330.0
    # Seconds kopf's per-object worker waits for the object's next event before it exits.
    # Short: during a burst every new object has a worker, with its queue and memo, and
    # kopf's 5 s kept 1,000 Instances' worth alive at once (bench/control_plane.py: peak
    # memory 160 -> 132 MiB with 0.5 s). A later event starts a new worker, which is cheap.
    worker_idle_seconds: float = 0.5


@dataclass(frozen=True)
class RetrySettings:
    # Seconds before the first retry of something that can heal (agent unreachable, a
    # dependency not there yet); doubled per attempt up to `max_seconds`.
    initial_seconds: float = 2.0
    max_seconds: float = 300.0
    # Seconds between looks at a problem that needs the user but may be fixed outside the
    # object (a Secret too large): cheap, so a fix is picked up without touching the object.
    stalled_seconds: float = 60.0
    # Seconds between looks at an Instance waiting on a Network, Image, Volume or
    # InstanceType (services/wakeups.py), in case the change that lets it go is missed: the
    # dependency's own watch events run it again at once.
    waiting_seconds: float = 60.0
    # Seconds between checks for waiting Instances whose look is due.
    waiting_tick_seconds: float = 1.0

    def backoff(self, attempt: int) -> float:
        return float(min(self.initial_seconds * 2 ** min(attempt, 20), self.max_seconds))


@dataclass(frozen=True)
class ImageSettings:
    # Where Image sources may point; the operator checks a URL before probing it, and the
    # agents check it again, with their own policy, before every connection they make.
    sources: SourcePolicy = field(default_factory=SourcePolicy)
    # Seconds the operator's HEAD probe of a source may take before it is tried again.
    probe_timeout_seconds: float = 15.0


@dataclass(frozen=True)
class StatusSettings:
    # Seconds a status change waits for others to the same object before it is written.
    # Changes made while a write to the object is being prepared always join it; waiting
    # longer saves requests only when a node answers within the wait, and it delays every
    # reconcile by as much (0.1 s cost 1,000 Instances 48 -> 132 s in bench/control_plane.py).
    coalesce_seconds: float = 0.0


@dataclass(frozen=True)
class EventSettings:
    # Events are a courtesy, and the API server keeps each an hour: a burst of them (1,000
    # Instances created at once post 2,000) must not crowd out the requests that do the
    # work. As the kubelet's --event-qps and --event-burst do, Events beyond this rate are
    # dropped and counted (stratus_operator_events_dropped_total), never queued.
    qps: float = 50.0
    burst: int = 100


@dataclass(frozen=True)
class LeaderSettings:
    """Leader election among operator replicas (services/leadership.py); off for a single
    operator. client-go's 15/10/2 s scaled down so a standby takes over from a dead leader
    within 15 s: lease + one retry + its start."""

    enabled: bool = False
    namespace: str = "stratus-system"
    name: str = "stratus-operator"
    lease_seconds: float = 10.0
    renew_deadline_seconds: float = 7.0
    retry_seconds: float = 2.0


@dataclass(frozen=True)
class EnrollmentSettings:
    """The endpoint agent pods enroll at (services/enrollment.py); off outside a chart."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = 8443
    # Where the operator keeps its CA (a Secret) and publishes its certificate (a ConfigMap
    # of the same name), and makes each node's Secret.
    namespace: str = "stratus-system"
    ca_name: str = "stratus-ca"
    # The Service agents reach this endpoint by: the names in its certificate.
    service: str = "stratus-operator"
    # The only ServiceAccount allowed to enroll (namespace, name).
    agent_service_account: tuple[str, str] = ("stratus-system", "stratus-agent")
    # The agents' DaemonSet: it owns the nodes' Secrets and the CA, so uninstalling it
    # removes them. Empty: nothing owns them.
    agent_daemonset: str = ""
    secret_prefix: str = "stratus-agent-"
    token_bytes: int = 32


@dataclass(frozen=True)
class ServingCertificate:
    """The certificate of the operator's own HTTPS endpoints (/metrics, the console proxy):
    the PEM files given; none: one from the enrollment CA for the names of the Service in
    front of them when enrollment is on, else a self-signed one (services/tls.py)."""

    cert_file: str = ""
    key_file: str = ""
    service: str = "stratus-operator"
    namespace: str = "stratus-system"


@dataclass(frozen=True)
class MetricsSettings:
    """/metrics over HTTPS (services/metrics_serving.py); off unless asked for."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = 8444
    certificate: ServingCertificate = field(default_factory=ServingCertificate)
    # Callers must hold `get` on the non-resource URL /metrics (TokenReview and
    # SubjectAccessReview, as kube-controller-manager asks); verdicts kept this long.
    authorize: bool = True
    verdict_seconds: float = 10.0


@dataclass(frozen=True)
class ConsoleSettings:
    """The console proxy (services/console_proxy.py); off unless asked for."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = 8445
    certificate: ServingCertificate = field(default_factory=ServingCertificate)
    # Seconds a session may pass with no byte either way before it is closed.
    idle_seconds: float = 900.0
    # Bytes per WebSocket message either way (a bigger one ends the session, 1009).
    max_frame_bytes: int = 256 * 1024
    # Seconds to reach the node's agent; token and access verdicts kept this long.
    connect_timeout_seconds: float = 10.0
    verdict_seconds: float = 10.0
    # The web dashboard, on the same port (its consoles are then the same origin).
    dashboard: bool = True
    # The key sealing its sessions' cookies (32 bytes, raw or base64), which replicas share;
    # empty: a new one at start, so sessions end with the process.
    session_key_file: str = ""
    session_seconds: float = 8 * 3600.0
    # Live parts (Server-Sent Events, each one or two watches as its user) open at once per
    # user: enough for a few tabs, not for one user to hold the API server's watches.
    live_streams_per_user: int = 16


@dataclass(frozen=True)
class OperatorSettings:
    agents: AgentSettings = field(default_factory=AgentSettings)
    scheduling: SchedulingSettings = field(default_factory=SchedulingSettings)
    images: ImageSettings = field(default_factory=ImageSettings)
    retries: RetrySettings = field(default_factory=RetrySettings)
    status: StatusSettings = field(default_factory=StatusSettings)
    events: EventSettings = field(default_factory=EventSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    leader: LeaderSettings = field(default_factory=LeaderSettings)
    enrollment: EnrollmentSettings = field(default_factory=EnrollmentSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    # Namespaces to watch; empty: all (cluster-wide).
    namespaces: tuple[str, ...] = ()
    # Python's collector thresholds (young, middle, old). Every watch event replaces a
    # parsed object that lives until the next one, so it reaches the old generation; with
    # Python's 10 a full collection ran every few thousand events and walked every object
    # held (bench/control_plane.py, 10,000 Instances: 54 full collections, 37 s of the
    # operator's 137 s of CPU). 100 makes them ten times rarer. A young collection walks
    # every container its objects hold, however old (a watch event's new body in a kopf
    # index of 10,000): at 700 allocations there were 7,655 young and 696 middle
    # collections for 10,000 Instances, 9 s of the operator's 73 s. 10,000 runs them 14
    # times less often: 62 s in all, 10.2 ms per Instance against 11.7, for 20% more peak
    # RSS (633 MiB against 527) at 10,000 and none at 1,000 (143 MiB).
    gc_thresholds: tuple[int, int, int] = (10000, 10, 100)
