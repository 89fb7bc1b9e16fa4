"""Container images, built offline into OCI archives in the per-user cache and imported into
a node's containerd (no registry; a user with one pushes the same archives).

- The operator and agent images: a Debian bookworm root made by mmdebstrap from Debian's
  packages, with a venv of the project's PyPI dependencies at the versions in .venv (the
  base layer), and this checkout's wheel on top (its own layer, so a code change rebuilds
  seconds of work, not the base). The operator runs as an unprivileged user; the agent is
  root, as it drives the host's libvirtd, Open vSwitch, LVM and network namespaces.
- The pod sandbox (pause) image: a static binary from hack/node/pause.c.

Each archive is named by a digest of what it is built from, so it is built once.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stratus_devcloud.controlplane import REPO_ROOT

CACHE = Path(os.environ.get("STRATUS_CACHE_DIR") or Path.home() / ".cache" / "stratus") / "images"
SUITE = "bookworm"
SOURCES = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
VENV = "/opt/stratus"
PYTHON = "python3.11"  # bookworm's, and .venv's: the wheels are built for it
UNPRIVILEGED = "65532:65532"  # distroless's nonroot; the image names it `stratus`
SANDBOX_IMAGE = "localhost/stratus/pause:3.10"
VERSION = importlib.metadata.version("stratus")  # the images' tag: the project's version


@dataclass(frozen=True)
class Recipe:
    """One image: its Debian packages, whether its venv sees Debian's Python modules (the
    agent's libvirt, rados and rbd bindings are Debian's, built against the node's
    libraries), who it runs as and what."""

    name: str
    packages: tuple[str, ...]
    system_site_packages: bool
    user: str
    command: tuple[str, ...]

    @property
    def reference(self) -> str:
        return f"localhost/stratus/{self.name}:{VERSION}"


BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
OPERATOR = Recipe("operator", BASE_PACKAGES, False, UNPRIVILEGED, ("operator",))
AGENT_PACKAGES = (
    *BASE_PACKAGES,
    "python3-libvirt", "python3-rados", "python3-rbd",  # bindings to the node's daemons
    "qemu-utils", "ceph-common", "lvm2",  # disks: qemu-img, rbd and ceph, LVM
    "openvswitch-switch", "dnsmasq-base", "iproute2", "iptables", "conntrack",  # networks
)  # fmt: skip
AGENT = Recipe("agent", AGENT_PACKAGES, True, "0:0", ("agent",))
RECIPES = {recipe.name: recipe for recipe in (OPERATOR, AGENT)}


@dataclass(frozen=True)
class Built:
    """An image archive, how long it took (0: it was in the cache) and its size."""

    recipe: str
    reference: str
    archive: Path
    seconds: float

    @property
    def size(self) -> int:
        return self.archive.stat().st_size


def build(recipe: Recipe, *, python: Path | None = None) -> Built:
    """The image's OCI archive, built unless the cache holds one from the same inputs.
    `python`: the interpreter whose installed versions pin the dependencies (.venv's)."""
    started = time.monotonic()
    python = python or Path(sys.executable)
    with tempfile.TemporaryDirectory(prefix="stratus-image-") as tmp:
        work = Path(tmp)
        wheels = _wheels(python, work / "wheels")
        own = next(wheels.glob("stratus-*.whl"))
        deps = sorted(w for w in wheels.glob("*.whl") if w != own)
        base_key = _digest(repr(recipe.packages), repr(recipe.system_site_packages), recipe.user,
                           *SOURCES, *(w.name for w in deps))  # fmt: skip
        key = _digest(base_key, repr(recipe), _file_digest(own))
        archive = CACHE / f"{recipe.name}-{key}.tar"
        if archive.exists():
            return Built(recipe.name, recipe.reference, archive, 0.0)
        base = _base_layer(recipe, deps, base_key, work)
        project = _project_layer(python, own, work)
        config = ImageConfig(
            user=recipe.user,
            entrypoint=(f"{VENV}/bin/python", "-m", "stratus_cli", *recipe.command),
            env=(f"PATH={VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp",
                 "PYTHONDONTWRITEBYTECODE=1"),
        )  # fmt: skip
        pack(archive, [base, project], config, tag=VERSION)
    for stale in CACHE.glob(f"{recipe.name}-*.tar"):
        if stale != archive:
            stale.unlink()  # one archive per image: the cache does not grow with each build
    return Built(recipe.name, recipe.reference, archive, time.monotonic() - started)


def _wheels(python: Path, into: Path) -> Path:
    """This checkout's wheel and its dependencies' wheels, at the versions `python` has
    installed (the agent's libvirt binding is Debian's, not a wheel)."""
    frozen = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    constraints = into.parent / "constraints.txt"
    constraints.write_text(frozen)
    into.mkdir(parents=True)
    subprocess.run(
        [str(python), "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(into),
         "--constraint", str(constraints), str(REPO_ROOT)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return into


def _base_layer(recipe: Recipe, deps: Sequence[Path], key: str, work: Path) -> Path:
    """Debian's packages and the venv with the dependencies, as a layer tarball; cached
    apart from the image, as it changes only with the dependencies."""
    layer = CACHE / f"{recipe.name}-base-{key}.tar"
    if layer.exists():
        return layer
    CACHE.mkdir(parents=True, exist_ok=True)
    staged = work / "deps"
    staged.mkdir()
    for wheel in deps:
        shutil.copy2(wheel, staged)
    venv = ["python3", "-m", "venv", *(["--system-site-packages"] * recipe.system_site_packages),
            VENV]  # fmt: skip
    install = [f"{VENV}/bin/pip", "install", "--quiet", "--no-index", "--no-compile",
               "--disable-pip-version-check", *(f"/tmp/deps/{w.name}" for w in deps)]  # fmt: skip
    hooks = [
        f'copy-in {staged} /tmp',
        f'chroot "$1" {" ".join(venv)}',
        f'chroot "$1" {" ".join(install)}',
        'rm -rf "$1"/tmp/deps "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
    ]  # fmt: skip
    if recipe.user != "0:0":
        # A name for the user it runs as: libraries ask the password database who they are.
        uid, gid = recipe.user.split(":")
        hooks.append(f'chroot "$1" groupadd --system --gid {gid} stratus')
        hooks.append(f'chroot "$1" useradd --system --uid {uid} --gid {gid} --no-create-home '
                     '--home-dir /nonexistent --shell /usr/sbin/nologin stratus')  # fmt: skip
    partial = layer.with_suffix(".tmp")
    subprocess.run(
        ["mmdebstrap", "--mode=root", "--variant=apt", "--format=tar", "--quiet",
         f"--include={','.join(recipe.packages)}",
         "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
         "--dpkgopt=path-exclude=/usr/share/locale/*",
         '--aptopt=Acquire::Check-Valid-Until "false"',
         *(f"--customize-hook={hook}" for hook in hooks), SUITE, str(partial), *SOURCES],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    partial.rename(layer)
    for stale in CACHE.glob(f"{recipe.name}-base-*.tar"):
        if stale != layer:
            stale.unlink()
    return layer


def _project_layer(python: Path, wheel: Path, work: Path) -> Path:
    """This checkout's packages, installed from its wheel into the venv's site-packages."""
    root = work / "project"
    site = root / VENV.lstrip("/") / "lib" / PYTHON / "site-packages"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-compile", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True)  # fmt: skip
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts name the host's python
    layer = work / "project.tar"
    _tar(root, layer)
    return layer


def _tar(root: Path, into: Path) -> None:
    """`root` as a layer: owned by root, with fixed times, so equal trees give equal layers."""
    subprocess.run(["tar", "-C", str(root), "--owner=0", "--group=0", "--numeric-owner",
                    "--mtime=@0", "--sort=name", "-cf", str(into), "."], check=True)  # fmt: skip


@dataclass(frozen=True)
class ImageConfig:
    user: str
    entrypoint: tuple[str, ...]
    env: tuple[str, ...] = ()


def pack(archive: Path, layers: Sequence[Path], config: ImageConfig, *, tag: str) -> None:
    """An OCI image archive of `layers` (tarballs, bottom first) with `config`, written
    atomically."""
    with tempfile.TemporaryDirectory(prefix="stratus-oci-") as tmp:
        layout = Path(tmp) / "layout"
        image = f"{layout}:{tag}"
        options = [f"--config.user={config.user}", "--architecture=amd64", "--os=linux"]
        options += [f"--config.entrypoint={part}" for part in config.entrypoint]
        options += [f"--config.env={env}" for env in config.env]
        for argv in (
            ["umoci", "init", "--layout", str(layout)],
            ["umoci", "new", "--image", image],
            *(["umoci", "raw", "add-layer", "--image", image, str(layer)] for layer in layers),
            ["umoci", "config", "--image", image, *options],
        ):
            subprocess.run(argv, check=True, capture_output=True, text=True)
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_suffix(".tmp")
        subprocess.run(["tar", "-C", str(layout), "-cf", str(partial), "."], check=True)
        partial.rename(archive)


def sandbox_archive() -> Path:
    """The pod sandbox image as an OCI archive, built once from hack/node/pause.c."""
    source = REPO_ROOT / "hack" / "node" / "pause.c"
    archive = CACHE / f"pause-{_file_digest(source)}.tar"
    if archive.exists():
        return archive
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rootfs"
        root.mkdir()
        subprocess.run(["gcc", "-Os", "-static", "-o", str(root / "pause"), str(source)],
                       check=True, capture_output=True)  # fmt: skip
        _tar(root, Path(tmp) / "layer.tar")
        config = ImageConfig(user="65535:65535", entrypoint=("/pause",))
        pack(archive, [Path(tmp) / "layer.tar"], config, tag=SANDBOX_IMAGE.rsplit(":", 1)[1])
    return archive


def _digest(*parts: str) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
