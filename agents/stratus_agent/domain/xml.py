"""libvirt domain XML, and the secrets its disks name, as small typed values: one class per
element we use, nothing else.

Each class converts itself to and from an lxml element and holds no policy: what goes into a
guest's XML is decided by `stratus_agent.domain.builder`. Reading is lenient on purpose:
elements and attributes we do not model are ignored, so the XML libvirt hands back for a
running domain (with its aliases, PCI addresses, controllers and defaults) parses too.
Writing is strict and stable: attributes and children always come out in the same order, so
golden files and drift checks compare text.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeVar, get_args

from lxml import etree

# Our own element inside <metadata>. libvirt keeps one element per namespace URI there and
# lets us read it back by that URI (virDomainGetMetadata), so the domain carries our IDs.
STRATUS_NS = "https://stratus.io/xmlns/guest/v1alpha1"
STRATUS_PREFIX = "stratus"

VirtType = Literal["kvm", "qemu"]
MemoryUnit = Literal["b", "KiB"]
CpuMode = Literal["host-passthrough", "host-model", "maximum", "custom"]
Lifecycle = Literal["destroy", "restart", "preserve", "rename-restart"]
DiskDevice = Literal["disk", "cdrom"]
DiskFormat = Literal["qcow2", "raw"]
DiskCache = Literal["none", "writeback", "writethrough", "directsync", "unsafe"]
DiskDiscard = Literal["ignore", "unmap"]
NetworkProtocol = Literal["rbd"]
SecretType = Literal["ceph"]
CharType = Literal["pty", "file"]
BalloonModel = Literal["virtio", "none"]

_S = TypeVar("_S", bound=str)


class DomainXMLError(ValueError):
    """The XML lacks something we need, or holds a value we do not understand."""


# --- small readers and writers shared by the element classes ------------------------------


def _where(el: etree._Element) -> str:
    return f"<{etree.QName(el).localname}> (line {el.sourceline})"


def _attr(el: etree._Element, name: str) -> str:
    value = el.get(name)
    if value is None:
        raise DomainXMLError(f"{_where(el)} has no {name!r} attribute")
    return value


def _child(el: etree._Element, tag: str) -> etree._Element:
    found = el.find(tag)
    if found is None:
        raise DomainXMLError(f"{_where(el)} has no <{tag}>")
    return found


def _text(el: etree._Element, tag: str) -> str:
    text = _child(el, tag).text
    if text is None or not text.strip():
        raise DomainXMLError(f"<{tag}> in {_where(el)} is empty")
    return text.strip()


def _optional_text(el: etree._Element, tag: str) -> str | None:
    found = el.find(tag)
    return found.text if found is not None and found.text else None


def _int(value: str, el: etree._Element) -> int:
    try:
        return int(value)
    except ValueError:
        raise DomainXMLError(f"{_where(el)}: {value!r} is not an integer") from None


def _one_of(value: str | None, allowed: tuple[_S, ...], el: etree._Element) -> _S:
    for choice in allowed:
        if value == choice:
            return choice
    raise DomainXMLError(f"{_where(el)}: {value!r} is not one of {', '.join(allowed)}")


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    # Keyword order is attribute order: lxml keeps insertion order, which keeps output stable.
    el = etree.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _root(tag: str, **attrs: str) -> etree._Element:
    return etree.Element(tag, attrs)


# --- <metadata> -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StratusMetadata:
    """`<stratus:instance>`: which Instance, and which generation of it, this domain runs,
    for which node and agent. They matter where several agents share one libvirtd
    (simulated nodes, several local clouds on one machine): each agent lists, reports and
    removes only its own domains. `agent` names the agent on its host (its state
    directory); None: made before agents were written here, when one libvirtd served one
    agent."""

    uid: str
    namespace: str
    name: str
    generation: int
    node: str | None = None
    agent: str | None = None

    TAG: ClassVar[str] = f"{{{STRATUS_NS}}}instance"

    def to_element(self) -> etree._Element:
        # Declared on the element itself: libvirt stores each metadata element standalone.
        el = etree.Element(self.TAG, nsmap={STRATUS_PREFIX: STRATUS_NS})
        for key, value in (
            ("uid", self.uid),
            ("namespace", self.namespace),
            ("name", self.name),
            ("generation", str(self.generation)),
        ):
            el.set(key, value)
        if self.node is not None:
            el.set("node", self.node)
        if self.agent is not None:
            el.set("agent", self.agent)
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> StratusMetadata:
        return cls(
            uid=_attr(el, "uid"),
            namespace=_attr(el, "namespace"),
            name=_attr(el, "name"),
            generation=_int(_attr(el, "generation"), el),
            node=el.get("node"),
            agent=el.get("agent"),
        )


# --- sizing, boot, platform -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Memory:
    """`<memory unit=...>`: the guest's RAM, in whole bytes or KiB."""

    amount: int
    unit: MemoryUnit = "KiB"

    def to_element(self) -> etree._Element:
        el = _root("memory", unit=self.unit)
        el.text = str(self.amount)
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> Memory:
        # libvirt's own default unit is KiB, and it writes KiB back.
        unit = _one_of(el.get("unit", "KiB"), get_args(MemoryUnit), el)
        return cls(amount=_int((el.text or "").strip(), el), unit=unit)


@dataclass(frozen=True, kw_only=True)
class Vcpu:
    """`<vcpu>`: number of virtual CPUs."""

    count: int

    def to_element(self) -> etree._Element:
        el = _root("vcpu")
        el.text = str(self.count)
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> Vcpu:
        return cls(count=_int((el.text or "").strip(), el))


@dataclass(frozen=True, kw_only=True)
class Os:
    """`<os>`: an HVM guest booted by the firmware from the devices in `boot`, in order."""

    arch: str = "x86_64"
    machine: str = "pc"
    boot: tuple[str, ...] = ("hd",)

    def to_element(self) -> etree._Element:
        el = _root("os")
        _sub(el, "type", "hvm", arch=self.arch, machine=self.machine)
        for dev in self.boot:
            _sub(el, "boot", dev=dev)
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> Os:
        type_el = _child(el, "type")
        if (type_el.text or "").strip() != "hvm":
            raise DomainXMLError(f"{_where(type_el)}: only hvm guests are supported")
        return cls(
            arch=_attr(type_el, "arch"),
            machine=_attr(type_el, "machine"),
            boot=tuple(_attr(b, "dev") for b in el.iterchildren("boot")),
        )


@dataclass(frozen=True, kw_only=True)
class Features:
    """`<features>`: the platform features we switch on (both are on/off flags)."""

    acpi: bool = True
    apic: bool = True

    def to_element(self) -> etree._Element:
        el = _root("features")
        if self.acpi:
            _sub(el, "acpi")
        if self.apic:
            _sub(el, "apic")
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> Features:
        return cls(acpi=el.find("acpi") is not None, apic=el.find("apic") is not None)


@dataclass(frozen=True, kw_only=True)
class Cpu:
    """`<cpu mode=...>`, with a `<model>` only in custom mode."""

    mode: CpuMode
    model: str | None = None

    def to_element(self) -> etree._Element:
        el = _root("cpu", mode=self.mode)
        if self.model is not None:
            _sub(el, "model", self.model, fallback="forbid")
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> Cpu:
        # No mode attribute means custom, as in libvirt.
        mode = _one_of(el.get("mode", "custom"), get_args(CpuMode), el)
        return cls(mode=mode, model=_optional_text(el, "model"))


@dataclass(frozen=True, kw_only=True)
class Timer:
    """`<timer>` inside `<clock>`."""

    name: str
    tickpolicy: str | None = None
    present: bool | None = None

    def to_element(self) -> etree._Element:
        el = _root("timer", name=self.name)
        if self.tickpolicy is not None:
            el.set("tickpolicy", self.tickpolicy)
        if self.present is not None:
            el.set("present", _yes_no(self.present))
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> Timer:
        present = el.get("present")
        return cls(
            name=_attr(el, "name"),
            tickpolicy=el.get("tickpolicy"),
            present=None if present is None else present == "yes",
        )


@dataclass(frozen=True, kw_only=True)
class Clock:
    """`<clock offset=...>` and its timers."""

    offset: str = "utc"
    timers: tuple[Timer, ...] = ()

    def to_element(self) -> etree._Element:
        el = _root("clock", offset=self.offset)
        el.extend(t.to_element() for t in self.timers)
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> Clock:
        return cls(
            offset=el.get("offset", "utc"),
            timers=tuple(Timer.from_element(t) for t in el.iterchildren("timer")),
        )


# --- devices ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DiskHost:
    """`<host>` in a network disk's `<source>`: one server (a Ceph monitor)."""

    name: str
    port: int | None = None

    def to_element(self) -> etree._Element:
        el = _root("host", name=self.name)
        if self.port is not None:
            el.set("port", str(self.port))
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> DiskHost:
        port = el.get("port")
        return cls(name=_attr(el, "name"), port=None if port is None else _int(port, el))


@dataclass(frozen=True, kw_only=True)
class NetworkSource:
    """`<source protocol='rbd' name='POOL/IMAGE'>`: an image QEMU opens itself over the
    network, from the servers in `hosts`."""

    name: str
    hosts: tuple[DiskHost, ...]
    protocol: NetworkProtocol = "rbd"

    def to_element(self) -> etree._Element:
        el = _root("source", protocol=self.protocol, name=self.name)
        el.extend(host.to_element() for host in self.hosts)
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> NetworkSource:
        return cls(
            name=_attr(el, "name"),
            hosts=tuple(DiskHost.from_element(h) for h in el.iterchildren("host")),
            protocol=_one_of(el.get("protocol"), get_args(NetworkProtocol), el),
        )


@dataclass(frozen=True, kw_only=True)
class DiskAuth:
    """`<auth username=...>`: who QEMU is to the storage; the key is the libvirt secret's
    `secret_uuid`, never in the domain."""

    username: str
    secret_uuid: str
    secret_type: SecretType = "ceph"

    def to_element(self) -> etree._Element:
        el = _root("auth", username=self.username)
        _sub(el, "secret", type=self.secret_type, uuid=self.secret_uuid)
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> DiskAuth:
        secret = _child(el, "secret")
        return cls(
            username=_attr(el, "username"),
            secret_uuid=_attr(secret, "uuid"),
            secret_type=_one_of(secret.get("type"), get_args(SecretType), secret),
        )


@dataclass(frozen=True, kw_only=True)
class Disk:
    """`<disk>`: a file-backed disk or CD-ROM (`source_file`, type='file'), a block device
    (`source_dev`, type='block') or a network disk (`source_network` and its `auth`,
    type='network'); exactly one source."""

    target_dev: str
    target_bus: str
    source_file: str | None = None
    source_dev: str | None = None
    source_network: NetworkSource | None = None
    auth: DiskAuth | None = None
    device: DiskDevice = "disk"
    driver_type: DiskFormat = "qcow2"
    driver_cache: DiskCache | None = None  # None: the hypervisor's default
    driver_discard: DiskDiscard | None = None
    readonly: bool = False
    shareable: bool = False  # other guests use it at the same time
    serial: str | None = None  # what the guest sees as the disk's serial

    def __post_init__(self) -> None:
        sources = (self.source_file, self.source_dev, self.source_network)
        if sum(source is not None for source in sources) != 1:
            raise DomainXMLError("a disk has exactly one of a file, block or network source")

    @property
    def type(self) -> str:
        if self.source_network is not None:
            return "network"
        return "block" if self.source_dev is not None else "file"

    def to_element(self) -> etree._Element:
        el = _root("disk", type=self.type, device=self.device)
        driver = _sub(el, "driver", name="qemu", type=self.driver_type)
        if self.driver_cache is not None:
            driver.set("cache", self.driver_cache)
        if self.driver_discard is not None:
            driver.set("discard", self.driver_discard)
        if self.source_network is not None:
            el.append(self.source_network.to_element())
        elif self.source_dev is not None:
            _sub(el, "source", dev=self.source_dev)
        else:
            _sub(el, "source", file=str(self.source_file))
        if self.auth is not None:
            el.append(self.auth.to_element())
        _sub(el, "target", dev=self.target_dev, bus=self.target_bus)
        if self.serial is not None:
            _sub(el, "serial", self.serial)
        if self.readonly:
            _sub(el, "readonly")
        if self.shareable:
            _sub(el, "shareable")
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> Disk:
        type_ = el.get("type")
        if type_ not in ("file", "block", "network"):
            raise DomainXMLError(
                f"{_where(el)}: only type='file', 'block' and 'network' disks are modelled"
            )
        driver, target, source = _child(el, "driver"), _child(el, "target"), _child(el, "source")
        # libvirt accepts <auth> inside <source> too, and may write it back there.
        auth = el.find("auth")
        if auth is None:
            auth = source.find("auth")
        cache, discard = driver.get("cache"), driver.get("discard")
        return cls(
            source_file=_attr(source, "file") if type_ == "file" else None,
            source_dev=_attr(source, "dev") if type_ == "block" else None,
            source_network=NetworkSource.from_element(source) if type_ == "network" else None,
            auth=None if auth is None else DiskAuth.from_element(auth),
            target_dev=_attr(target, "dev"),
            target_bus=_attr(target, "bus"),
            device=_one_of(el.get("device", "disk"), get_args(DiskDevice), el),
            driver_type=_one_of(driver.get("type"), get_args(DiskFormat), driver),
            driver_cache=None if cache is None else _one_of(cache, get_args(DiskCache), driver),
            driver_discard=(
                None if discard is None else _one_of(discard, get_args(DiskDiscard), driver)
            ),
            readonly=el.find("readonly") is not None,
            shareable=el.find("shareable") is not None,
            serial=_optional_text(el, "serial"),
        )


@dataclass(frozen=True, kw_only=True)
class VirtualPort:
    """`<virtualport type='openvswitch'>`: libvirt adds the tap to an OVS bridge itself."""

    interface_id: str | None = None

    def to_element(self) -> etree._Element:
        el = _root("virtualport", type="openvswitch")
        if self.interface_id is not None:
            _sub(el, "parameters", interfaceid=self.interface_id)
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> VirtualPort:
        if el.get("type") != "openvswitch":
            raise DomainXMLError(f"{_where(el)}: only openvswitch virtual ports are modelled")
        params = el.find("parameters")
        return cls(interface_id=None if params is None else params.get("interfaceid"))


@dataclass(frozen=True, kw_only=True)
class Interface:
    """`<interface type='bridge'>`: a NIC whose tap is plugged into a host bridge."""

    source_bridge: str
    target_dev: str
    mac: str
    model: str = "virtio"
    mtu: int | None = None
    virtualport: VirtualPort | None = None
    vlan_tag: int | None = None
    host_checksum: bool = True  # False: <driver><host csum='off'/>, the guest sums itself

    def to_element(self) -> etree._Element:
        el = _root("interface", type="bridge")
        _sub(el, "mac", address=self.mac)
        _sub(el, "source", bridge=self.source_bridge)
        if self.virtualport is not None:
            el.append(self.virtualport.to_element())
        if self.vlan_tag is not None:
            _sub(_sub(el, "vlan"), "tag", id=str(self.vlan_tag))
        _sub(el, "target", dev=self.target_dev)
        _sub(el, "model", type=self.model)
        if not self.host_checksum:
            _sub(_sub(el, "driver"), "host", csum="off")
        if self.mtu is not None:
            _sub(el, "mtu", size=str(self.mtu))
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> Interface:
        if el.get("type") != "bridge":
            raise DomainXMLError(f"{_where(el)}: only type='bridge' interfaces are modelled")
        virtualport, tag, mtu = el.find("virtualport"), el.find("vlan/tag"), el.find("mtu")
        model, host = el.find("model"), el.find("driver/host")
        return cls(
            source_bridge=_attr(_child(el, "source"), "bridge"),
            target_dev=_attr(_child(el, "target"), "dev"),
            mac=_attr(_child(el, "mac"), "address"),
            model="virtio" if model is None else _attr(model, "type"),
            mtu=None if mtu is None else _int(_attr(mtu, "size"), mtu),
            virtualport=None if virtualport is None else VirtualPort.from_element(virtualport),
            vlan_tag=None if tag is None else _int(_attr(tag, "id"), tag),
            host_checksum=host is None or host.get("csum") != "off",
        )


@dataclass(frozen=True, kw_only=True)
class Serial:
    """`<serial>`: a pty (so `virsh console` attaches) or a file, optionally logged.

    `<log>` is handled by virtlogd for any character-device backend, so a pty serial with a
    log file gives both an interactive console and a complete boot log.
    """

    type: CharType = "pty"
    source_path: str | None = None  # the output file, for type='file'
    log_file: str | None = None
    log_append: bool = False
    port: int = 0

    def to_element(self) -> etree._Element:
        el = _root("serial", type=self.type)
        if self.source_path is not None:
            _sub(el, "source", path=self.source_path)
        if self.log_file is not None:
            _sub(el, "log", file=self.log_file, append="on" if self.log_append else "off")
        _sub(el, "target", port=str(self.port))
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> Serial:
        source, log, target = el.find("source"), el.find("log"), el.find("target")
        # A running pty serial reports the pty it got as its source path: not ours to keep.
        type_ = _one_of(el.get("type"), get_args(CharType), el)
        return cls(
            type=type_,
            source_path=source.get("path") if source is not None and type_ == "file" else None,
            log_file=None if log is None else _attr(log, "file"),
            log_append=log is not None and log.get("append") == "on",
            port=0 if target is None else _int(target.get("port", "0"), target),
        )


@dataclass(frozen=True, kw_only=True)
class Console:
    """`<console>` on a serial port: libvirt makes it an alias of that `<serial>`."""

    type: CharType = "pty"
    target_type: str = "serial"
    port: int = 0

    def to_element(self) -> etree._Element:
        el = _root("console", type=self.type)
        _sub(el, "target", type=self.target_type, port=str(self.port))
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> Console:
        target = _child(el, "target")
        return cls(
            type=_one_of(el.get("type"), get_args(CharType), el),
            target_type=_attr(target, "type"),
            port=_int(target.get("port", "0"), target),
        )


@dataclass(frozen=True, kw_only=True)
class Graphics:
    """`<graphics type='vnc'>` on one listen address; `port` is set only by libvirt."""

    listen: str = "127.0.0.1"
    autoport: bool = True
    port: int | None = None

    def to_element(self) -> etree._Element:
        el = _root("graphics", type="vnc")
        if self.port is not None:
            el.set("port", str(self.port))
        el.set("autoport", _yes_no(self.autoport))
        _sub(el, "listen", type="address", address=self.listen)
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> Graphics:
        if el.get("type") != "vnc":
            raise DomainXMLError(f"{_where(el)}: only vnc graphics are modelled")
        listen = el.find("listen[@type='address']")
        address = listen.get("address") if listen is not None else el.get("listen")
        port = el.get("port")
        return cls(
            listen=address or "127.0.0.1",
            autoport=el.get("autoport", "no") == "yes",
            # libvirt writes -1 until an autoport guest runs.
            port=None if port is None or port == "-1" else _int(port, el),
        )


@dataclass(frozen=True, kw_only=True)
class Video:
    """`<video>` with its adapter model."""

    model: str = "vga"

    def to_element(self) -> etree._Element:
        el = _root("video")
        _sub(el, "model", type=self.model)
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> Video:
        return cls(model=_attr(_child(el, "model"), "type"))


@dataclass(frozen=True, kw_only=True)
class MemBalloon:
    """`<memballoon>`; libvirt adds a virtio one when absent, so 'none' must be explicit."""

    model: BalloonModel = "virtio"
    stats_period: int | None = None  # seconds between guest memory statistics updates

    def to_element(self) -> etree._Element:
        el = _root("memballoon", model=self.model)
        if self.stats_period is not None:
            _sub(el, "stats", period=str(self.stats_period))
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> MemBalloon:
        stats = el.find("stats")
        return cls(
            model=_one_of(el.get("model"), get_args(BalloonModel), el),
            stats_period=None if stats is None else _int(_attr(stats, "period"), stats),
        )


@dataclass(frozen=True, kw_only=True)
class Rng:
    """`<rng model='virtio'>` fed from a host random device."""

    source: str = "/dev/urandom"

    def to_element(self) -> etree._Element:
        el = _root("rng", model="virtio")
        _sub(el, "backend", self.source, model="random")
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> Rng:
        if el.get("model") != "virtio":
            raise DomainXMLError(f"{_where(el)}: only virtio rng devices are modelled")
        return cls(source=_text(el, "backend"))


@dataclass(frozen=True, kw_only=True)
class Devices:
    """`<devices>`, grouped by kind; each group is written in list order, groups in a fixed
    order. Devices of kinds we do not model (controllers, inputs...) are skipped on read."""

    disks: tuple[Disk, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    serials: tuple[Serial, ...] = ()
    consoles: tuple[Console, ...] = ()
    graphics: tuple[Graphics, ...] = ()
    videos: tuple[Video, ...] = ()
    rngs: tuple[Rng, ...] = ()
    memballoon: MemBalloon | None = None

    def to_element(self) -> etree._Element:
        el = _root("devices")
        for group in (
            self.disks,
            self.interfaces,
            self.serials,
            self.consoles,
            self.graphics,
            self.videos,
            self.rngs,
        ):
            el.extend(device.to_element() for device in group)
        if self.memballoon is not None:
            el.append(self.memballoon.to_element())
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> Devices:
        balloon = el.find("memballoon")
        return cls(
            disks=tuple(Disk.from_element(d) for d in el.iterchildren("disk")),
            interfaces=tuple(Interface.from_element(i) for i in el.iterchildren("interface")),
            serials=tuple(Serial.from_element(s) for s in el.iterchildren("serial")),
            consoles=tuple(Console.from_element(c) for c in el.iterchildren("console")),
            graphics=tuple(Graphics.from_element(g) for g in el.iterchildren("graphics")),
            videos=tuple(Video.from_element(v) for v in el.iterchildren("video")),
            rngs=tuple(Rng.from_element(r) for r in el.iterchildren("rng")),
            memballoon=None if balloon is None else MemBalloon.from_element(balloon),
        )


# --- security -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DacSeclabel:
    """`<seclabel type='static' model='dac'>`: the user and group QEMU runs as.

    `relabel` says whether libvirt chowns the guest's files to them when it starts; the
    label is written as `+UID:+GID`, numbers that need no passwd entry.
    """

    uid: int
    gid: int
    relabel: bool = False

    def to_element(self) -> etree._Element:
        el = _root("seclabel", type="static", model="dac", relabel=_yes_no(self.relabel))
        _sub(el, "label", f"+{self.uid}:+{self.gid}")
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> DacSeclabel:
        if el.get("model") != "dac" or el.get("type") != "static":
            raise DomainXMLError(f"{_where(el)} is not a static DAC label")
        user, sep, group = _text(el, "label").partition(":")
        if not sep or not user.startswith("+") or not group.startswith("+"):
            raise DomainXMLError(f"{_where(el)}: label must be +UID:+GID")
        return cls(
            uid=_int(user[1:], el),
            gid=_int(group[1:], el),
            relabel=el.get("relabel", "yes") == "yes",  # libvirt's default for static: yes
        )


# --- the domain -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Domain:
    """`<domain>`: a whole guest definition."""

    type: VirtType
    name: str
    uuid: str
    memory: Memory
    vcpu: Vcpu
    os: Os
    devices: Devices
    title: str | None = None
    description: str | None = None
    metadata: StratusMetadata | None = None
    features: Features = field(default_factory=Features)
    cpu: Cpu | None = None  # None: the hypervisor's default CPU model
    clock: Clock = field(default_factory=Clock)
    on_poweroff: Lifecycle = "destroy"
    on_reboot: Lifecycle = "restart"
    on_crash: Lifecycle = "destroy"
    seclabel: DacSeclabel | None = None  # None: the driver's default user (libvirt-qemu)

    def to_element(self) -> etree._Element:
        el = _root("domain", type=self.type)
        _sub(el, "name", self.name)
        _sub(el, "uuid", self.uuid)
        if self.title is not None:
            _sub(el, "title", self.title)
        if self.description is not None:
            _sub(el, "description", self.description)
        if self.metadata is not None:
            _sub(el, "metadata").append(self.metadata.to_element())
        el.extend([self.memory.to_element(), self.vcpu.to_element(), self.os.to_element()])
        el.append(self.features.to_element())
        if self.cpu is not None:
            el.append(self.cpu.to_element())
        el.append(self.clock.to_element())
        _sub(el, "on_poweroff", self.on_poweroff)
        _sub(el, "on_reboot", self.on_reboot)
        _sub(el, "on_crash", self.on_crash)
        el.append(self.devices.to_element())
        if self.seclabel is not None:
            el.append(self.seclabel.to_element())
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> Domain:
        if el.tag != "domain":
            raise DomainXMLError(f"expected <domain>, got <{el.tag}>")
        ours = el.find(f"metadata/{StratusMetadata.TAG}")
        features, cpu, clock = el.find("features"), el.find("cpu"), el.find("clock")
        dac = el.find("seclabel[@model='dac'][@type='static']")
        seclabel = None
        if dac is not None:
            # Lenient like the rest of reading: a label set by hand with user names is not
            # ours, and must not make the whole domain unreadable.
            with contextlib.suppress(DomainXMLError):
                seclabel = DacSeclabel.from_element(dac)

        def lifecycle(tag: str, default: Lifecycle) -> Lifecycle:
            return _one_of(_optional_text(el, tag) or default, get_args(Lifecycle), el)

        return cls(
            type=_one_of(el.get("type"), get_args(VirtType), el),
            name=_text(el, "name"),
            uuid=_text(el, "uuid"),
            memory=Memory.from_element(_child(el, "memory")),
            vcpu=Vcpu.from_element(_child(el, "vcpu")),
            os=Os.from_element(_child(el, "os")),
            devices=Devices.from_element(_child(el, "devices")),
            title=_optional_text(el, "title"),
            description=_optional_text(el, "description"),
            metadata=None if ours is None else StratusMetadata.from_element(ours),
            features=Features() if features is None else Features.from_element(features),
            cpu=None if cpu is None else Cpu.from_element(cpu),
            clock=Clock() if clock is None else Clock.from_element(clock),
            # libvirt's defaults when absent: destroy, restart, destroy.
            on_poweroff=lifecycle("on_poweroff", "destroy"),
            on_reboot=lifecycle("on_reboot", "restart"),
            on_crash=lifecycle("on_crash", "destroy"),
            seclabel=seclabel,
        )

    def to_xml(self) -> str:
        return etree.tostring(self.to_element(), encoding="unicode", pretty_print=True)

    @classmethod
    def from_xml(cls, text: str) -> Domain:
        return cls.from_element(parse(text))


# --- secrets ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CephSecret:
    """`<secret>` of usage ceph: where libvirt keeps a cephx key for the disks whose <auth>
    names `uuid`. Persistent (ephemeral='no'), so guests start after a libvirtd restart;
    private='yes', so nobody reads the value back through libvirt. The value itself is set
    apart (virSecretSetValue), never in this XML."""

    uuid: str
    usage_name: str

    def to_element(self) -> etree._Element:
        el = _root("secret", ephemeral="no", private="yes")
        _sub(el, "uuid", self.uuid)
        _sub(_sub(el, "usage", type="ceph"), "name", self.usage_name)
        return el

    @classmethod
    def from_element(cls, el: etree._Element) -> CephSecret:
        usage = _child(el, "usage")
        if el.tag != "secret" or usage.get("type") != "ceph":
            raise DomainXMLError(f"{_where(el)} is not a ceph secret")
        return cls(uuid=_text(el, "uuid"), usage_name=_text(usage, "name"))


def parse(text: str) -> etree._Element:
    """Parse XML text without entity expansion or network access, ignoring layout whitespace."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)
    try:
        return etree.fromstring(text.encode(), parser)
    except etree.XMLSyntaxError as exc:
        raise DomainXMLError(f"not well-formed XML: {exc}") from None


def to_text(el: etree._Element) -> str:
    """One element as pretty, stable text (what the golden files hold)."""
    return etree.tostring(el, encoding="unicode", pretty_print=True)
