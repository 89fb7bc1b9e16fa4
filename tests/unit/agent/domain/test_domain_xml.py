"""Domain XML: golden files per element and per whole domain, round trips, builder policy.

Golden files are the reviewed text of what we send libvirt. After an intended change,
regenerate them with `STRATUS_UPDATE_GOLDEN=1 pytest tests/unit/agent/domain` and review the
diff; without the variable, the text must match exactly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import pytest
from lxml import etree
from pydantic import SecretStr

from stratus_agent import base
from stratus_agent.domain import builder
from stratus_agent.domain import xml as dx
from stratus_api import guest
from stratus_api.imageref import ImageRef
from stratus_api.volume_wire import CephAccess

GOLDEN = Path(__file__).parent / "golden"
UID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("STRATUS_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"{path} is missing: run with STRATUS_UPDATE_GOLDEN=1 to write it"
    assert text == path.read_text(), f"{name} differs from its golden file"


# --- inputs -----------------------------------------------------------------------------


def nic(index: int, **changes: object) -> guest.Nic:
    fields: dict[str, object] = {
        "network": f"net-{index}",
        "network_uid": f"0000000{index}-0000-4000-8000-000000000000",
        "mac": f"52:54:00:00:00:0{index}",
        "address": f"10.0.{index}.5",
        "prefix_length": 24,
        "mtu": 1450,
        **changes,
    }
    return guest.Nic.model_validate(fields)


def spec(**changes: object) -> guest.GuestSpec:
    fields: dict[str, object] = {
        "uid": UID,
        "name": "web",
        "namespace": "team-a",
        "generation": 3,
        "cpu": 1,
        "memory_bytes": 256 * 2**20,
        "disks": [
            guest.Disk(
                name="root",
                image=ImageRef(uid=UID, name="debian", url="http://images.test/d.qcow2"),
            )
        ],
        "nics": [nic(0)],
        "cloud_init": guest.CloudInit(instance_id=UID, hostname="web"),
        **changes,
    }
    return guest.GuestSpec.model_validate(fields)


def facts(nics: int | tuple[base.NicBinding, ...] = 1, **changes: object) -> base.NodeFacts:
    if isinstance(nics, int):
        nics = tuple(base.NicBinding(bridge="br-stratus") for _ in range(nics))
    fields: dict[str, object] = {
        "root_disk": base.DiskSource(path=f"/var/lib/stratus/guests/{UID}-root.qcow2"),
        "seed_iso_path": f"/var/lib/stratus/guests/{UID}-seed.iso",
        "nics": nics,
        **changes,
    }
    return base.NodeFacts(**fields)  # type: ignore[arg-type]


def build(
    spec: guest.GuestSpec, node: base.NodeFacts, virt_type: base.VirtType = "qemu"
) -> dx.Domain:
    """As the libvirt driver builds it: the virt type and console log are the driver's."""
    console_log = f"/var/lib/stratus/guests/{UID}-console.log"
    return builder.build_domain(spec, node, virt_type=virt_type, console_log=console_log)


def qemu_one_nic() -> dx.Domain:
    return build(spec(), facts())


def kvm_two_nics_no_vnc() -> dx.Domain:
    volume = guest.Disk(name="data", size_bytes=2**30)
    two_nics = spec(
        cpu=2,
        memory_bytes=2 * 2**30,
        vnc=False,
        disks=[*spec().disks, volume],
        nics=[nic(0), nic(1, mtu=9000, segmentation_id=42)],
    )
    # The second NIC on a userspace-datapath bridge: the guest fills in its checksums.
    bindings = (base.NicBinding(bridge="br-stratus"),
                base.NicBinding(bridge="br-stratus", host_checksum=False))  # fmt: skip
    node = facts(
        nics=bindings,
        cdrom_bus="sata",
        machine="q35",
        volumes=(base.VolumeAttachment(name="data", path="/srv/volumes/data.raw"),),
        owner=base.GuestOwner(uid=1_900_000_007, gid=108),
    )
    return build(two_nics, node, "kvm")


RBD_SECRET = "5d7a4c1e-2b3f-5a6c-9d8e-7f6a5b4c3d2e"


def rbd(image: str) -> base.RbdSource:
    return base.RbdSource(
        pool="stratus",
        image=image,
        monitors=("10.0.0.1:3300", "[fd00::2]:6789", "mon-c"),
        user="stratus",
        secret_uuid=RBD_SECRET,
    )


def rbd_boot_and_data() -> dx.Domain:
    """Booted from an RBD volume, with a second one as a data disk."""
    volumes = spec(disks=[guest.Disk(name="boot"), guest.Disk(name="data")], nics=[])
    node = facts(
        nics=0,
        root_disk=base.DiskSource(rbd=rbd(f"volume-{UID}"), serial="6f1c2a3b4d5e4f608a7b"),
        volumes=(base.VolumeAttachment(name="data", rbd=rbd("volume-x"), serial="0123"),),
    )
    return build(volumes, node)


DOMAINS = {
    "domain_qemu_1nic.xml": qemu_one_nic,
    "domain_kvm_2nic_novnc.xml": kvm_two_nics_no_vnc,
    "domain_qemu_rbd.xml": rbd_boot_and_data,
}


class Element(Protocol):
    def to_element(self) -> etree._Element: ...

    @classmethod
    def from_element(cls, el: etree._Element) -> object: ...


ELEMENTS: dict[str, Element] = {
    "element_metadata.xml": dx.StratusMetadata(
        uid=UID,
        namespace="team-a",
        name="web",
        generation=3,
        node="node-a",
        agent="/var/lib/stratus/agent",
    ),
    "element_memory_bytes.xml": dx.Memory(amount=1_000_000_000, unit="b"),
    "element_os.xml": dx.Os(machine="pc", boot=("hd", "cdrom")),
    "element_cpu_custom.xml": dx.Cpu(mode="custom", model="qemu64"),
    "element_clock.xml": dx.Clock(
        timers=(dx.Timer(name="rtc", tickpolicy="catchup"), dx.Timer(name="hpet", present=False))
    ),
    "element_disk_root.xml": dx.Disk(
        source_file="/var/lib/stratus/guests/x-root.qcow2", target_dev="vda", target_bus="virtio"
    ),
    "element_disk_cdrom.xml": dx.Disk(
        device="cdrom",
        source_file="/var/lib/stratus/guests/x-seed.iso",
        driver_type="raw",
        target_dev="hda",
        target_bus="ide",
        readonly=True,
    ),
    "element_disk_rbd.xml": dx.Disk(
        source_network=dx.NetworkSource(
            name="stratus/volume-x", hosts=(dx.DiskHost(name="127.0.0.1", port=3300),)
        ),
        auth=dx.DiskAuth(username="stratus", secret_uuid=RBD_SECRET),
        driver_type="raw",
        driver_cache="writeback",
        driver_discard="unmap",
        target_dev="vdb",
        target_bus="virtio",
        serial="0123456789abcdef0123",
    ),
    "element_secret_ceph.xml": dx.CephSecret(
        uuid=RBD_SECRET, usage_name=f"stratus client.stratus {UID}"
    ),
    "element_interface_full.xml": dx.Interface(
        source_bridge="br-stratus",
        target_dev="st6f1c2a3b4d5e0",
        mac="52:54:00:12:34:56",
        mtu=1450,
        virtualport=dx.VirtualPort(interface_id="a5bd4c2e-1f0a-4b7e-9d3c-2e1f0a4b7e9d"),
        vlan_tag=42,
        host_checksum=False,
    ),
    "element_serial_pty_logged.xml": dx.Serial(log_file="/var/log/stratus/x.log"),
    "element_serial_file.xml": dx.Serial(type="file", source_path="/var/log/stratus/x.log"),
    "element_graphics_vnc.xml": dx.Graphics(listen="127.0.0.1"),
    "element_memballoon.xml": dx.MemBalloon(stats_period=10),
    "element_rng.xml": dx.Rng(),
    "element_seclabel_dac.xml": dx.DacSeclabel(uid=1_900_000_001, gid=1_900_000_001),
}


# --- golden files -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ELEMENTS))
def test_element_matches_golden(name: str) -> None:
    assert_golden(name, dx.to_text(ELEMENTS[name].to_element()))


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_domain_matches_golden(name: str) -> None:
    assert_golden(name, DOMAINS[name]().to_xml())


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_golden_domain_passes_libvirt_schema(name: str) -> None:
    validator = shutil.which("virt-xml-validate")
    if validator is None:
        pytest.skip("virt-xml-validate not installed (Debian package libvirt-clients)")
    if shutil.which("xmllint") is None:  # virt-xml-validate is a script around it
        pytest.skip("xmllint not installed (Debian package libxml2-utils)")
    result = subprocess.run(
        [validator, str(GOLDEN / name), "domain"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ELEMENTS))
def test_element_round_trips(name: str) -> None:
    value = ELEMENTS[name]
    assert type(value).from_element(value.to_element()) == value


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_domain_round_trips(name: str) -> None:
    domain = DOMAINS[name]()
    assert dx.Domain.from_xml(domain.to_xml()) == domain
    assert dx.Domain.from_xml(domain.to_xml()).to_xml() == domain.to_xml()


def test_reading_ignores_what_libvirt_adds_to_a_running_domain() -> None:
    live = dx.parse(qemu_one_nic().to_xml())
    live.set("id", "7")
    devices = live.find("devices")
    assert devices is not None
    etree.SubElement(devices, "controller", type="usb", index="0")
    for device in devices:
        etree.SubElement(device, "alias", name="ua-x")
    serial, graphics = devices.find("serial"), devices.find("graphics")
    assert serial is not None and graphics is not None
    etree.SubElement(serial, "source", path="/dev/pts/3")  # the pty it was given
    graphics.set("port", "5900")
    domain = dx.Domain.from_element(live)
    assert domain.devices.graphics[0].port == 5900
    assert domain.devices.serials == qemu_one_nic().devices.serials
    assert domain.metadata == qemu_one_nic().metadata


def test_other_metadata_namespaces_are_ignored() -> None:
    text = (
        qemu_one_nic()
        .to_xml()
        .replace("<metadata>", '<metadata><other:x xmlns:other="urn:other"/>')
    )
    assert dx.Domain.from_xml(text).metadata == qemu_one_nic().metadata


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("<domain type='xen'/>", "'xen' is not one of kvm, qemu"),
        ("<domain type='qemu'><name>a</name></domain>", "has no <uuid>"),
        ("<domain", "not well-formed"),
    ],
)
def test_bad_xml_is_refused_clearly(text: str, complaint: str) -> None:
    with pytest.raises(dx.DomainXMLError, match=complaint):
        dx.Domain.from_xml(text)


# --- builder policy ---------------------------------------------------------------------


def test_metadata_written_before_nodes_were_named_reads_as_no_node() -> None:
    """Domains of agents older than simulated nodes stay their node's (node None)."""
    old = dx.parse(f'<stratus:instance xmlns:stratus="{dx.STRATUS_NS}" uid="{UID}" '
                   'namespace="team-a" name="web" generation="3"/>')  # fmt: skip
    assert dx.StratusMetadata.from_element(old).node is None


def test_names_and_ids_come_from_the_instance_uid() -> None:
    domain = qemu_one_nic()
    assert domain.name == f"stratus-{UID}" and domain.uuid == UID
    assert domain.metadata == dx.StratusMetadata(
        uid=UID, namespace="team-a", name="web", generation=3
    )
    assert [i.target_dev for i in kvm_two_nics_no_vnc().devices.interfaces] == [
        "st6f1c2a3b4d5e0",
        "st6f1c2a3b4d5e1",
    ]


@pytest.mark.parametrize(
    ("memory_bytes", "expected"),
    [
        (256 * 2**20, dx.Memory(amount=256 * 1024, unit="KiB")),
        (10**9, dx.Memory(amount=10**9, unit="b")),  # "1G" is not whole KiB: keep the bytes
    ],
)
def test_memory_is_exact(memory_bytes: int, expected: dx.Memory) -> None:
    assert build(spec(memory_bytes=memory_bytes), facts()).memory == expected


def test_cpu_mode_follows_the_virt_type() -> None:
    assert qemu_one_nic().cpu == dx.Cpu(mode="maximum")
    assert kvm_two_nics_no_vnc().cpu == dx.Cpu(mode="host-passthrough")


def test_power_state_does_not_change_the_definition() -> None:
    stopped = spec(power=guest.PowerState.STOPPED)
    assert build(stopped, facts()) == qemu_one_nic()


def test_disks_are_root_then_volumes_then_the_seed_cdrom() -> None:
    disks = kvm_two_nics_no_vnc().devices.disks
    assert [(d.target_dev, d.target_bus, d.driver_type) for d in disks] == [
        ("vda", "virtio", "qcow2"),
        ("vdb", "virtio", "raw"),
        ("sda", "sata", "raw"),
    ]
    assert disks[-1].device == "cdrom" and disks[-1].readonly


def test_a_volume_disk_carries_its_serial_and_reads_back() -> None:
    with_volume = spec(disks=[*spec().disks, guest.Disk(name="data")])
    attached = base.VolumeAttachment(
        name="data", path="/v/x.qcow2", format="qcow2", serial="0123456789abcdef0123"
    )
    domain = build(with_volume, facts(volumes=(attached,)))
    disk = domain.devices.disks[1]
    assert disk.serial == "0123456789abcdef0123" and domain.devices.disks[0].serial is None
    assert "<serial>0123456789abcdef0123</serial>" in dx.to_text(disk.to_element())
    assert dx.Domain.from_xml(domain.to_xml()) == domain


def test_a_volume_the_node_did_not_attach_is_an_error() -> None:
    with_volume = spec(disks=[*spec().disks, guest.Disk(name="data")])
    with pytest.raises(ValueError, match="'data' has no volume attached"):
        build(with_volume, facts())


def test_no_vnc_means_no_graphics_and_no_video() -> None:
    devices = kvm_two_nics_no_vnc().devices
    assert devices.graphics == () and devices.videos == ()


def test_an_owner_becomes_a_static_dac_label_that_libvirt_does_not_relabel() -> None:
    assert qemu_one_nic().seclabel is None  # libvirt's default user
    assert kvm_two_nics_no_vnc().seclabel == dx.DacSeclabel(
        uid=1_900_000_007, gid=108, relabel=False
    )


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (
            "<seclabel type='static' model='dac'><label>qemu:kvm</label></seclabel>",
            r"must be \+UID",
        ),
        ("<seclabel type='static' model='dac'><label>+x:+1</label></seclabel>", "not an integer"),
        ("<seclabel type='dynamic' model='selinux'/>", "not a static DAC label"),
    ],
)
def test_seclabels_we_cannot_read_are_refused(text: str, complaint: str) -> None:
    with pytest.raises(dx.DomainXMLError, match=complaint):
        dx.DacSeclabel.from_element(dx.parse(text))


def test_nics_carry_mtu_and_the_network_drivers_local_vlan() -> None:
    second = kvm_two_nics_no_vnc().devices.interfaces[1]
    assert second.mtu == 9000 and second.vlan_tag is None  # untagged where the driver says
    assert second.virtualport == dx.VirtualPort() and second.source_bridge == "br-stratus"
    tagged = replace(facts(), nics=(base.NicBinding(bridge="br-stratus", vlan_tag=7),))
    nic = build(spec(), tagged).devices.interfaces[0]
    assert nic.vlan_tag == 7
    assert '<tag id="7"/>' in dx.to_text(nic.to_element())


def test_restart_token_does_not_change_the_definition() -> None:
    assert build(spec(restart_token="again"), facts()) == qemu_one_nic()


def test_the_root_disk_is_what_the_disk_driver_made() -> None:
    raw = facts(root_disk=base.DiskSource(path="/dev/vg0/root", format="raw"))
    root = build(spec(), raw).devices.disks[0]
    assert (root.source_file, root.driver_type) == ("/dev/vg0/root", "raw")


def test_every_nic_needs_a_binding_from_the_network_driver() -> None:
    with pytest.raises(ValueError, match="1 NICs in the spec, 0 plugged"):
        build(spec(), facts(nics=0))


def test_an_rbd_volume_is_a_network_disk_with_its_monitors_and_secret() -> None:
    root, data, _seed = rbd_boot_and_data().devices.disks
    assert root.source_network == dx.NetworkSource(
        name=f"stratus/volume-{UID}",
        hosts=(
            dx.DiskHost(name="10.0.0.1", port=3300),
            dx.DiskHost(name="fd00::2", port=6789),
            dx.DiskHost(name="mon-c"),
        ),
    )
    assert root.source_file is None and root.serial == "6f1c2a3b4d5e4f608a7b"
    assert root.auth == dx.DiskAuth(username="stratus", secret_uuid=RBD_SECRET)
    assert (data.target_dev, data.driver_type, data.driver_cache, data.driver_discard) == (
        "vdb", "raw", "writeback", "unmap"
    )  # fmt: skip
    text = dx.to_text(data.to_element())
    assert text.startswith('<disk type="network" device="disk">'), text


def test_an_lvm_volume_is_a_block_disk_without_the_host_cache() -> None:
    node = facts(volumes=(base.VolumeAttachment(
        name="data", path="/dev/vg0/volume-x", serial="0123", block=True),))  # fmt: skip
    data = build(spec(disks=[*spec().disks, guest.Disk(name="data")]), node).devices.disks[1]
    assert (data.type, data.source_dev, data.source_file, data.driver_cache) == (
        "block", "/dev/vg0/volume-x", None, "none"
    )  # fmt: skip
    text = dx.to_text(data.to_element())
    assert '<disk type="block" device="disk">' in text
    assert '<source dev="/dev/vg0/volume-x"/>' in text
    assert dx.Disk.from_element(data.to_element()) == data


CEPH = CephAccess(pool_uid=UID, monitors=["10.0.0.1:3300"], pool="stratus", user="stratus",
                  key=SecretStr("QUFBQQ=="))  # fmt: skip


def test_a_shareable_rbd_volume_says_so_and_skips_librbds_cache() -> None:
    shared = guest.Disk(name="data", volume=guest.VolumeDisk(
        uid=UID, backend="ceph", serial="0123", shareable=True, ceph=CEPH))  # fmt: skip
    node = facts(volumes=(base.VolumeAttachment(name="data", rbd=rbd("volume-x"), serial="0123"),))
    data = build(spec(disks=[*spec().disks, shared]), node).devices.disks[1]
    assert (data.shareable, data.driver_cache) == (True, "none")
    assert "<shareable/>" in dx.to_text(data.to_element())
    assert dx.Disk.from_element(data.to_element()) == data


def test_an_rbd_disk_reads_back_with_its_auth_inside_the_source() -> None:
    """libvirt may write <auth> inside <source>, where it also accepts it."""
    disk = ELEMENTS["element_disk_rbd.xml"]
    el = disk.to_element()
    auth, source = el.find("auth"), el.find("source")
    assert auth is not None and source is not None
    source.append(auth)
    assert dx.Disk.from_element(el) == disk


def test_a_disk_has_exactly_one_source() -> None:
    with pytest.raises(dx.DomainXMLError, match="exactly one"):
        dx.Disk(target_dev="vda", target_bus="virtio")
    with pytest.raises(ValueError, match="exactly one"):
        base.VolumeAttachment(name="data", path="/v", rbd=rbd("volume-x"))
