"""The agent's HTTPS API (aiohttp). Every request needs the bearer token; GET /metrics also
takes the metrics token, when the node has one (Prometheus's, which can do nothing else)."""

from __future__ import annotations

import asyncio
import datetime
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from stratus_agent.api import consoles
from stratus_agent.api import metrics as agent_metrics
from stratus_agent.api.events import EventHub
from stratus_agent.base import ImageStore, NetworkDriver
from stratus_agent.errors import ProvisioningError
from stratus_agent.manager.guests import GuestManager, StaleSpecError
from stratus_agent.manager.snapshots import SnapshotManager
from stratus_agent.manager.volumes import VolumeInUseError, VolumeManager
from stratus_api import naming
from stratus_api.guest import GuestEvent, GuestSpec, NodeInventory
from stratus_api.network_wire import NodeNetworkChange, NodeNetworkSpec
from stratus_api.router_wire import NodeRouterSpec
from stratus_api.security_group_wire import NodeSecurityGroupChange, NodeSecurityGroupSpec
from stratus_api.validation import problems_of
from stratus_api.volume_wire import NodeSnapshotSpec, NodeVolumeSpec

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MANAGER = web.AppKey("manager", GuestManager)
HUB = web.AppKey("hub", EventHub)
TOKEN = web.AppKey("token", str)
METRICS_TOKEN = web.AppKey("metrics_token", str)
NODE = web.AppKey("node", str)
HEARTBEAT = web.AppKey("heartbeat", float)
IMAGES = web.AppKey("images", ImageStore)
VOLUMES = web.AppKey("volumes", VolumeManager)
SNAPSHOTS = web.AppKey("snapshots", SnapshotManager)
PHYSICAL_NETWORKS = web.AppKey("physical_networks", list[str])
NETWORKS = web.AppKey("networks", NetworkDriver)
TUNNEL_ENDPOINT = web.AppKey("tunnel_endpoint", str)
Spec = TypeVar(
    "Spec", GuestSpec, NodeVolumeSpec, NodeSnapshotSpec, NodeNetworkSpec, NodeRouterSpec,
    NodeSecurityGroupSpec,
)  # fmt: skip


CONSOLES = web.AppKey("consoles", consoles.Consoles)
STREAMS = frozenset({"/v1/events", "/v1/guests/{uid}/console", "/v1/guests/{uid}/vnc"})
METRICS = web.AppKey("metrics", agent_metrics.AgentMetrics)


def _error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _route(request: web.Request) -> str:
    """The matched route's pattern (never the URL itself, which may hold a UID)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _authorized(request: web.Request, presented: bytes) -> bool:
    if hmac.compare_digest(presented, request.app[TOKEN].encode()):
        return True
    # The metrics token opens the scrape and nothing else: whoever holds it (Prometheus)
    # must not be able to read specs or drive guests.
    scrape_token = request.app.get(METRICS_TOKEN)
    return (
        scrape_token is not None
        and request.method == "GET"
        and _route(request) == "/metrics"
        and hmac.compare_digest(presented, scrape_token.encode())
    )


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not _authorized(request, presented.encode()):
        return _error(401, "missing or wrong bearer token")
    return await handler(request)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An unexpected exception still answers JSON the client can show, never a bare 500."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, f"agent error: {type(exc).__name__}: {exc}")


@web.middleware
async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
    name = _route(request)
    started = time.monotonic()
    code = 500
    try:
        response = await handler(request)
        code = response.status
        return response
    except web.HTTPException as exc:
        code = exc.status
        raise
    finally:
        metrics = request.app[METRICS]
        metrics.requests.labels(request.method, name, str(code)).inc()
        if name not in STREAMS:  # sessions, not requests
            metrics.latency.labels(request.method, name).observe(time.monotonic() - started)


async def healthz(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    return web.json_response(
        {"ok": True, "node": request.app[NODE], "virtType": manager.compute.virt_type}
    )


async def metrics(request: web.Request) -> web.Response:
    scrape = await agent_metrics.read(request.app[MANAGER], request.app.get(IMAGES))
    return web.Response(
        body=agent_metrics.render(request.app[METRICS], scrape),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


async def inventory(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    cpu, memory = await manager.compute.capacity()
    body = NodeInventory(
        node=request.app[NODE],
        virt_type=manager.compute.virt_type,
        cpu=cpu,
        memory_bytes=memory,
        physical_networks=request.app[PHYSICAL_NETWORKS],
        tunnel_endpoint=request.app.get(TUNNEL_ENDPOINT),
        guests=await manager.inventory(),
    )
    return web.json_response(text=body.model_dump_json(by_alias=True))


UidHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


def _uid_route(kind: str) -> Callable[[UidHandler], Handler]:
    """Refuses a {uid} that is not a Kubernetes UID before the handler sees it: every file,
    domain and port name on the node is made from it (aiohttp decodes %2e%2e%2f to ../)."""

    def route(handler: UidHandler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            uid = request.match_info["uid"]
            if not naming.is_uid(uid):
                return _error(400, f"{uid!r} in the URL is not {kind} UID (a Kubernetes UID)")
            return await handler(request, uid)

        return checked

    return route


guest_route = _uid_route("a guest")
volume_route = _uid_route("a volume")
snapshot_route = _uid_route("a snapshot")
image_route = _uid_route("an image")


@guest_route
async def serial_console(request: web.Request, uid: str) -> web.StreamResponse:
    return await consoles.relay(request, request.app[CONSOLES].serial(uid))


@guest_route
async def vnc_console(request: web.Request, uid: str) -> web.StreamResponse:
    return await consoles.relay(request, request.app[CONSOLES].vnc(uid))


@guest_route
async def get_guest(request: web.Request, uid: str) -> web.Response:
    status = request.app[MANAGER].status(uid)
    if status is None:
        return _error(404, f"no guest {uid} on this node")
    return web.json_response(text=status.model_dump_json(by_alias=True))


async def _spec_of(
    request: web.Request, uid: str, model: type[Spec], what: str
) -> Spec | web.Response:
    """The body as `model`, for the UID in the URL; else the error reply (400 not JSON,
    422 naming each field)."""
    return await _parsed(request, uid, model.model_validate, f"{what} spec")


class _ForOne(Protocol):
    uid: str


Parsed = TypeVar("Parsed", bound=_ForOne)


async def _parsed(
    request: web.Request, uid: str, parse: Callable[[object], Parsed], what: str
) -> Parsed | web.Response:
    try:
        raw = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(400, f"body is not JSON: {exc}")
    try:
        spec = parse(raw)
    except ValidationError as exc:
        problems = [str(problem) for problem in problems_of(exc)]
        return _error(422, f"invalid {what}: " + "; ".join(problems), problems=problems)
    if spec.uid != uid:
        problem = f"uid: {spec.uid} does not match the URL's {uid}"
        return _error(422, f"invalid {what}: {problem}", problems=[problem])
    return spec


@guest_route
async def put_guest(request: web.Request, uid: str) -> web.Response:
    spec = await _spec_of(request, uid, GuestSpec, "guest")
    if isinstance(spec, web.Response):
        return spec
    try:
        status = await request.app[MANAGER].ensure(spec)
    except StaleSpecError as exc:
        return _error(409, str(exc))
    return web.json_response(text=status.model_dump_json(by_alias=True), status=202)


@guest_route
async def delete_guest(request: web.Request, uid: str) -> web.Response:
    deleted = await request.app[MANAGER].delete(uid)
    return web.json_response({"deleted": deleted})


def _volumes(request: web.Request) -> VolumeManager:
    volumes = request.app.get(VOLUMES)
    if volumes is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": "this agent holds no volumes"}),
            content_type="application/json",
        )
    return volumes


def _snapshots(request: web.Request) -> SnapshotManager:
    snapshots = request.app.get(SNAPSHOTS)
    if snapshots is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": "this agent holds no snapshots"}),
            content_type="application/json",
        )
    return snapshots


async def volume_inventory(request: web.Request) -> web.Response:
    body = await _volumes(request).inventory()
    snapshots = request.app.get(SNAPSHOTS)
    if snapshots is not None:
        body.snapshots = snapshots.inventory()
    return web.json_response(text=body.model_dump_json(by_alias=True))


@volume_route
async def get_volume(request: web.Request, uid: str) -> web.Response:
    status = _volumes(request).status(uid)
    if status is None:
        return _error(404, f"no volume {uid} on this node")
    return web.json_response(text=status.model_dump_json(by_alias=True))


@volume_route
async def put_volume(request: web.Request, uid: str) -> web.Response:
    volumes = _volumes(request)
    spec = await _spec_of(request, uid, NodeVolumeSpec, "volume")
    if isinstance(spec, web.Response):
        return spec
    status = await volumes.ensure(spec)
    return web.json_response(text=status.model_dump_json(by_alias=True))


@volume_route
async def delete_volume(request: web.Request, uid: str) -> web.Response:
    try:
        await _volumes(request).delete(uid)
    except VolumeInUseError as exc:
        return _error(409, str(exc), guests=exc.guests)
    return web.Response(status=204)


@snapshot_route
async def get_snapshot(request: web.Request, uid: str) -> web.Response:
    status = _snapshots(request).status(uid)
    if status is None:
        return _error(404, f"no snapshot {uid} on this node")
    return web.json_response(text=status.model_dump_json(by_alias=True))


@snapshot_route
async def put_snapshot(request: web.Request, uid: str) -> web.Response:
    snapshots = _snapshots(request)
    spec = await _spec_of(request, uid, NodeSnapshotSpec, "snapshot")
    if isinstance(spec, web.Response):
        return spec
    status = await snapshots.ensure(spec)
    return web.json_response(text=status.model_dump_json(by_alias=True))


@snapshot_route
async def delete_snapshot(request: web.Request, uid: str) -> web.Response:
    await _snapshots(request).delete(uid)
    return web.Response(status=204)


def _networks(request: web.Request) -> NetworkDriver:
    networks = request.app.get(NETWORKS)
    if networks is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": "this agent holds no networks"}),
            content_type="application/json",
        )
    return networks


Kept = TypeVar("Kept", NodeNetworkSpec, NodeRouterSpec, NodeSecurityGroupSpec)


class SpecChange(Protocol[Kept]):
    """A change to the revision of a kept spec (stratus_api.spec_changes)."""

    uid: str
    base: str

    def applied(self, spec: Kept) -> Kept: ...

    def held_by(self, spec: Kept) -> bool: ...


@dataclass(frozen=True)
class KeptSpecs(Generic[Kept]):
    """A kind of node spec the network driver keeps, and what its routes say: the list
    (`listed`: its key), GET, PUT (kept even when it cannot be applied now: the periodic
    check applies it), PATCH with a `change` to the revision held (when the kind has one)
    and DELETE."""

    what: str
    model: type[Kept]
    listed: str
    uids: Callable[[NetworkDriver], list[str]]
    get: Callable[[NetworkDriver, str], Kept | None]
    ensure: Callable[[NetworkDriver, Kept], Awaitable[None]]
    remove: Callable[[NetworkDriver, str], Awaitable[bool]]
    not_applied: str  # PUT's 503: "network UID <not_applied>: why"
    not_removed: str  # DELETE's 503
    change: Callable[[object], SpecChange[Kept]] | None = None  # parses a PATCH body


def _add_kept_routes(app: web.Application, path: str, kind: KeptSpecs[Kept]) -> None:
    route = _uid_route(f"a {kind.what}")

    async def listed(request: web.Request) -> web.Response:
        return web.json_response({kind.listed: kind.uids(_networks(request))})

    @route
    async def get(request: web.Request, uid: str) -> web.Response:
        spec = kind.get(_networks(request), uid)
        if spec is None:
            return _error(404, f"{kind.what} {uid} is not kept here")
        return web.json_response(text=spec.model_dump_json(by_alias=True))

    async def ensure(networks: NetworkDriver, uid: str, spec: Kept) -> web.Response:
        try:
            await kind.ensure(networks, spec)
        except ProvisioningError as exc:
            return _error(503, f"{kind.what} {uid} {kind.not_applied}: {exc}",
                          reason=exc.reason.value)  # fmt: skip
        return web.json_response({"uid": uid})

    @route
    async def put(request: web.Request, uid: str) -> web.Response:
        networks = _networks(request)
        spec = await _spec_of(request, uid, kind.model, kind.what)
        if isinstance(spec, web.Response):
            return spec
        return await ensure(networks, uid, spec)

    @route
    async def patch(request: web.Request, uid: str) -> web.Response:
        """409 when the change is not to the revision held: the sender sends it whole."""
        assert kind.change is not None
        networks = _networks(request)
        change = await _parsed(request, uid, kind.change, f"{kind.what} change")
        if isinstance(change, web.Response):
            return change
        held = kind.get(networks, uid)
        if held is None or not change.held_by(held):
            return _error(409, f"{kind.what} {uid}: this node does not hold revision "
                          f"{change.base}; send the whole spec")  # fmt: skip
        try:
            spec = change.applied(held)
        except ValueError as exc:
            return _error(422, f"invalid {kind.what} change: {exc}", problems=[str(exc)])
        return await ensure(networks, uid, spec)

    @route
    async def delete(request: web.Request, uid: str) -> web.Response:
        networks = _networks(request)
        try:
            deleted = await kind.remove(networks, uid)
        except ProvisioningError as exc:
            return _error(503, f"{kind.what} {uid} {kind.not_removed}: {exc}",
                          reason=exc.reason.value)  # fmt: skip
        return web.json_response({"deleted": deleted})

    app.router.add_get(path, listed)
    app.router.add_get(f"{path}/{{uid}}", get)
    app.router.add_put(f"{path}/{{uid}}", put)
    if kind.change is not None:
        app.router.add_patch(f"{path}/{{uid}}", patch)
    app.router.add_delete(f"{path}/{{uid}}", delete)


NETWORK_SPECS = KeptSpecs(
    "network", NodeNetworkSpec, "networks", lambda n: n.networks(), lambda n, u: n.network(u),
    lambda n, s: n.ensure_network(s), lambda n, u: n.remove_network(u),
    "kept, not applied yet", "forgotten, flows not updated yet", NodeNetworkChange.model_validate,
)  # fmt: skip
# Kept when this node builds routers at all.
ROUTER_SPECS = KeptSpecs(
    "router", NodeRouterSpec, "routers", lambda n: n.router_uids(), lambda n, u: n.router(u),
    lambda n, s: n.ensure_router(s), lambda n, u: n.remove_router(u),
    "not built yet", "not removed yet",
)  # fmt: skip
SECURITY_GROUP_SPECS = KeptSpecs(
    "security group", NodeSecurityGroupSpec, "securityGroups",
    lambda n: n.security_group_uids(), lambda n, u: n.security_group(u),
    lambda n, s: n.ensure_security_group(s), lambda n, u: n.remove_security_group(u),
    "kept, not applied yet", "forgotten, flows not updated yet",
    NodeSecurityGroupChange.model_validate,
)  # fmt: skip


@image_route
async def delete_image(request: web.Request, uid: str) -> web.Response:
    """The Image is gone: evict its cached file now, or once no guest's root disk uses it,
    and its copies imported into Ceph pools, once no volume is a clone of them. An app made
    without an image store has nothing to evict."""
    volumes = request.app.get(VOLUMES)
    if volumes is not None:
        await volumes.release_image(uid)
    images = request.app.get(IMAGES)
    if images is None:
        return web.json_response({"evicted": False, "inUse": False})
    released = await images.release(uid)
    return web.json_response({"evicted": released.evicted, "inUse": released.in_use})


@_uid_route("a CephPool")
async def delete_ceph_pool(request: web.Request, uid: str) -> web.Response:
    """The CephPool is gone: stop serving it, and remove its access (the cephx key) from
    the node's files and from the hypervisor's secrets."""
    volumes = request.app.get(VOLUMES)
    served = await volumes.forget_pool(uid) if volumes is not None else False
    secret = await request.app[MANAGER].compute.remove_ceph_secret(uid)
    return web.json_response({"forgotten": served or secret})


async def events(request: web.Request) -> web.StreamResponse:
    """Newline-delimited JSON GuestEvents until the client goes away, with heartbeats.

    The first line is a `resync` event: the stream is live from here on, so the client
    reads the inventory now and misses nothing in between.
    """
    hub, beat = request.app[HUB], request.app[HEARTBEAT]
    app_metrics = request.app[METRICS]
    with hub.subscribe() as queue:  # before the headers go out, so no event falls between
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        app_metrics.streams.inc()
        try:
            event: GuestEvent | None = GuestEvent(type="resync", time=_now())
            while event is not None:  # None: agent stopping, or the client fell behind
                await response.write(event.model_dump_json(by_alias=True).encode() + b"\n")
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=beat)
                except TimeoutError:
                    event = GuestEvent(type="heartbeat", time=_now())
            await response.write_eof()
        except ConnectionResetError:
            pass
        finally:
            app_metrics.streams.dec()
    return response


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def create_app(
    manager: GuestManager,
    hub: EventHub,
    *,
    token: str,
    node: str,
    metrics_token: str | None = None,
    heartbeat: float = 10.0,
    images: ImageStore | None = None,
    volumes: VolumeManager | None = None,
    snapshots: SnapshotManager | None = None,
    physical_networks: Sequence[str] = (),
    networks: NetworkDriver | None = None,
    tunnel_endpoint: str | None = None,
) -> web.Application:
    app = web.Application(
        middlewares=[measure, authenticate, json_errors], client_max_size=2 * 2**20
    )
    app[MANAGER], app[HUB], app[TOKEN], app[NODE] = manager, hub, token, node
    app[HEARTBEAT], app[METRICS] = heartbeat, agent_metrics.AgentMetrics()
    if metrics_token is not None:
        app[METRICS_TOKEN] = metrics_token
    app[PHYSICAL_NETWORKS] = list(physical_networks)
    if images is not None:
        app[IMAGES] = images
    if volumes is not None:
        app[VOLUMES] = volumes
    if snapshots is not None:
        app[SNAPSHOTS] = snapshots
    if networks is not None:
        app[NETWORKS] = networks
    if tunnel_endpoint is not None:
        app[TUNNEL_ENDPOINT] = tunnel_endpoint
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/guests", inventory)
    app.router.add_get("/v1/guests/{uid}", get_guest)
    app[CONSOLES] = consoles.Consoles(manager)
    app.router.add_get("/v1/guests/{uid}/console", serial_console)
    app.router.add_get("/v1/guests/{uid}/vnc", vnc_console)
    app.router.add_put("/v1/guests/{uid}", put_guest)
    app.router.add_delete("/v1/guests/{uid}", delete_guest)
    app.router.add_delete("/v1/images/{uid}", delete_image)
    app.router.add_delete("/v1/cephpools/{uid}", delete_ceph_pool)
    app.router.add_get("/v1/volumes", volume_inventory)
    app.router.add_get("/v1/volumes/{uid}", get_volume)
    app.router.add_put("/v1/volumes/{uid}", put_volume)
    app.router.add_delete("/v1/volumes/{uid}", delete_volume)
    app.router.add_get("/v1/snapshots/{uid}", get_snapshot)
    app.router.add_put("/v1/snapshots/{uid}", put_snapshot)
    app.router.add_delete("/v1/snapshots/{uid}", delete_snapshot)
    _add_kept_routes(app, "/v1/networks", NETWORK_SPECS)
    _add_kept_routes(app, "/v1/routers", ROUTER_SPECS)
    _add_kept_routes(app, "/v1/security-groups", SECURITY_GROUP_SPECS)
    app.router.add_get("/v1/events", events)

    async def end_streams(_app: web.Application) -> None:
        hub.close()

    app.on_shutdown.append(end_streams)
    return app
