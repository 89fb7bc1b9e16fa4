"""What the dashboard shows of an object, and the objects its forms make: plain functions of
the API server's JSON, with no web framework, so they are tested alone."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from stratus_api.v1alpha1 import GROUP, VERSION
from stratus_api.v1alpha1.image import DiskFormat
from stratus_api.v1alpha1.network import NetworkType
from stratus_api.v1alpha1.volume import VolumeBackend


@dataclass(frozen=True)
class Kind:
    plural: str
    kind: str
    title: str  # plural, for headings
    columns: tuple[str, ...]  # beside name, state and age


KINDS = {
    k.plural: k
    for k in (
        Kind("instances", "Instance", "Instances", ("Node", "Addresses")),
        Kind("networks", "Network", "Networks", ("Type", "Subnets")),
        Kind("volumes", "Volume", "Volumes", ("Size", "Backend", "Attached to")),
        Kind("images", "Image", "Images", ("Source", "Size")),
    )
}


@dataclass(frozen=True)
class Row:
    """One object in a table: its cells beside its name and state."""

    name: str
    state: str  # the phase, else Ready/NotReady
    tone: str  # ok, busy or bad: how the state reads
    reason: str  # why, in a few words
    cells: tuple[str, ...]
    age: str
    deleting: bool = False

    @property
    def id(self) -> str:
        return f"row-{self.name}"


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str
    changed: str


@dataclass(frozen=True)
class Detail:
    row: Row
    conditions: tuple[Condition, ...]
    fields: tuple[tuple[str, str], ...] = field(default=())


def age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    """kubectl's short age: 42s, 5m, 3h, 2d."""
    if not timestamp:
        return ""
    when = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.datetime.now(datetime.UTC)) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _ready(obj: dict[str, Any]) -> dict[str, Any]:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return dict(condition)
    return {}


def _tone(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if (conditions.get("Stalled") or {}).get("status") == "True":
        return "bad"
    if status.get("phase") in ("Failed", "Error"):
        return "bad"
    ready = conditions.get("Ready") or {}
    current = ready.get("observedGeneration") in (None, obj["metadata"].get("generation"))
    return "ok" if ready.get("status") == "True" and current else "busy"


def _cells(plural: str, obj: dict[str, Any]) -> tuple[str, ...]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if plural == "instances":
        addresses = [f"{i.get('network')}: {i['ip']}" for i in status.get("interfaces") or []
                     if i.get("ip")]  # fmt: skip
        return (status.get("node") or "", ", ".join(addresses))
    if plural == "networks":
        cidrs = [s.get("cidr", "") for s in spec.get("subnets") or []]
        return (spec.get("type", ""), ", ".join(cidrs))
    if plural == "volumes":
        return (str(spec.get("size", "")), spec.get("backend", ""), status.get("attachedTo") or "")
    if plural == "images":
        source = spec.get("source") or {}
        url = (source.get("http") or {}).get("url") or next(iter(source), "")
        return (url, str(status.get("virtualSize") or ""))
    return ()


def row(plural: str, obj: dict[str, Any], now: datetime.datetime | None = None) -> Row:
    meta, status = obj["metadata"], obj.get("status") or {}
    ready = _ready(obj)
    state = status.get("phase") or (
        ("Ready" if ready.get("status") == "True" else "NotReady") if ready else "Pending"
    )
    deleting = bool(meta.get("deletionTimestamp"))
    return Row(
        name=meta["name"], state="Deleting" if deleting else str(state),
        tone="busy" if deleting else _tone(obj), reason=str(ready.get("reason") or ""),
        cells=_cells(plural, obj), age=age(meta.get("creationTimestamp"), now),
        deleting=deleting,
    )  # fmt: skip


def detail(plural: str, obj: dict[str, Any]) -> Detail:
    status = obj.get("status") or {}
    keys = ("type", "status", "reason", "message", "lastTransitionTime")
    conditions = tuple(
        Condition(*(str(c.get(k, "")) for k in keys)) for c in status.get("conditions") or []
    )
    kind = KINDS[plural]
    fields = tuple(zip(kind.columns, _cells(plural, obj), strict=True))
    return Detail(row(plural, obj), conditions, fields)


# ---- topology -------------------------------------------------------------------------


@dataclass(frozen=True)
class Placed:
    name: str
    x: int
    y: int
    tone: str


@dataclass(frozen=True)
class Topology:
    """Networks as horizontal buses, Instances as boxes below, lines where a NIC joins."""

    networks: tuple[Placed, ...]
    instances: tuple[Placed, ...]
    links: tuple[tuple[int, int, int, int, str], ...]  # x1, y1, x2, y2, address
    width: int
    height: int


BUS_GAP, BOX_W, BOX_GAP, TOP = 60, 150, 30, 40


def topology(networks: list[dict[str, Any]], instances: list[dict[str, Any]]) -> Topology:
    names = sorted(n["metadata"]["name"] for n in networks)
    for instance in instances:  # a Network an Instance names but the user cannot see
        for nic in (instance.get("spec") or {}).get("networks") or []:
            if nic.get("name") and nic["name"] not in names:
                names.append(nic["name"])
    bus_y = {name: TOP + i * BUS_GAP for i, name in enumerate(names)}
    tones = {n["metadata"]["name"]: _tone(n) for n in networks}
    boxes_y = TOP + len(names) * BUS_GAP + 20
    width = max(600, 40 + len(instances) * (BOX_W + BOX_GAP))
    placed_networks = tuple(Placed(n, 20, y, tones.get(n, "bad")) for n, y in bus_y.items())
    placed_instances, links = [], []
    for i, instance in enumerate(sorted(instances, key=lambda o: o["metadata"]["name"])):
        x = 20 + i * (BOX_W + BOX_GAP)
        placed_instances.append(Placed(instance["metadata"]["name"], x, boxes_y, _tone(instance)))
        ips = {nic.get("network"): nic.get("ip") or "" for nic in
               (instance.get("status") or {}).get("interfaces") or []}  # fmt: skip
        for nic in (instance.get("spec") or {}).get("networks") or []:
            name = nic.get("name")
            if name in bus_y:
                cx = x + BOX_W // 2
                links.append((cx, bus_y[name], cx, boxes_y, ips.get(name, "")))
    return Topology(placed_networks, tuple(placed_instances), tuple(links), width, boxes_y + 80)


# ---- forms -> objects ---


def options(networks: list[str]) -> dict[str, list[tuple[str, str]]]:
    """The choices of the forms' selects, from the API's own enums."""
    return {
        "networks": [("", "none"), *((n, n) for n in networks)],
        "type": [(t.value, t.value) for t in NetworkType],
        "backend": [("", "the cluster's default"), *((b.value, b.value) for b in VolumeBackend)],
        "format": [("", "detect"), *((f.value, f.value) for f in DiskFormat)],
    }


# --------------------------------------------------------------------


def manifest(plural: str, form: dict[str, str]) -> dict[str, Any]:
    """The object a create form asks for. Only shape is decided here: what is valid is the
    API server's to say (the CRDs' schemas and rules), so its message reaches the user."""
    kind = KINDS[plural].kind
    name = form.get("name", "").strip()
    spec: dict[str, Any]
    if plural == "instances":
        spec = {"boot": {"image": form.get("image", "").strip()}}
        if form.get("instanceType", "").strip():
            spec["instanceType"] = form["instanceType"].strip()
        if form.get("cpu", "").strip():
            spec["cpu"] = _number(form["cpu"])
        if form.get("memory", "").strip():
            spec["memory"] = form["memory"].strip()
        networks = [n.strip() for n in form.get("networks", "").split(",") if n.strip()]
        if networks:
            spec["networks"] = [{"name": n} for n in networks]
        if form.get("userData", "").strip():
            spec["userData"] = form["userData"].replace("\r\n", "\n")
    elif plural == "networks":
        spec = {"type": form.get("type", "overlay") or "overlay"}
        if form.get("cidr", "").strip():
            subnet: dict[str, Any] = {"cidr": form["cidr"].strip()}
            if form.get("gateway", "").strip():
                subnet["gateway"] = form["gateway"].strip()
            spec["subnets"] = [subnet]
    elif plural == "volumes":
        spec = {"size": form.get("size", "").strip()}
        if form.get("backend", "").strip():
            spec["backend"] = form["backend"].strip()
    else:
        spec = {"source": {"http": {"url": form.get("url", "").strip()}}}
        if form.get("format", "").strip():
            spec["format"] = form["format"].strip()
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name},
            "spec": spec}  # fmt: skip


def _number(text: str) -> int | str:
    """An integer when it is one; else the text, for the API server to refuse by name."""
    try:
        return int(text.strip())
    except ValueError:
        return text.strip()
