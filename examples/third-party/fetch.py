#!/usr/bin/env python3
"""Fetch third-party multiboot kernels from Debian's archive and build what hvdbg boots.

    python examples/third-party/fetch.py [--cache DIR] [xen] [grub] [grub-xen] [invaders]

Everything lands in the cache (default guests/build/third-party/, git-ignored):

* ``xen/xen.elf``: Xen's hypervisor from ``xen-hypervisor-<version>-amd64``
  (``/boot/xen-<version>-amd64.gz``, a gzipped ELF32 with multiboot 1 and 2 headers),
  gunzipped; ``xen/dom0-placeholder``: the multiboot module Xen insists on (it panics
  "dom0 kernel not specified" without one; this one is not an ELF kernel, so Xen boots
  all the way to building dom0 and stops there).
* ``grub/grub-coreboot.elf``: GRUB's core image for the ``i386-coreboot`` platform, made
  with ``grub-mkimage`` from ``grub-coreboot-bin``'s modules.  Its kernel carries a
  multiboot 1 header (GRUB's own ``i386-multiboot`` platform is not packaged by Debian),
  takes its memory map from the firmware's coreboot table, and gets a memdisk holding
  ``boot/grub/grub.cfg`` (examples/third-party/grub/) and hvdbg's ``hello.elf`` guest.
* ``grub/grub-xen.elf``: the same GRUB with Xen and its module in the memdisk: GRUB's
  multiboot loader boots Xen (a boot loader and a hypervisor nobody on the team wrote).
* ``invaders/invaders.exec``: ``grub-invaders``, a multiboot 1 game that only uses the VGA
  text screen and the PS/2 keyboard.

Packages are fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into the
cache: nothing is installed on the system except ``grub-common`` (for ``grub-mkimage``)
when it is missing.  ``apt-get update`` runs once if apt does not know a package yet.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_CACHE = REPO / "guests" / "build" / "third-party"
HELLO_ELF = REPO / "guests" / "build" / "hello.elf"

GRUB_MODULES = ("serial", "terminal", "echo", "normal", "test", "iorw", "lsmmap", "cbls", "lsacpi",
                "cpuid", "memdisk", "tar", "multiboot")
XEN_PACKAGE_RE = re.compile(r"^xen-hypervisor-(\d+(?:\.\d+)+)-amd64$")
DOM0_PLACEHOLDER = b"hvdbg: this multiboot module is not a dom0 kernel\n"


class FetchError(RuntimeError):
    """A package or tool could not be had; the message says which and why."""


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)


def _apt_update() -> None:
    if os.geteuid() != 0:
        raise FetchError("apt does not know the package and only root can run apt-get update")
    r = _run(["apt-get", "update", "-qq"])
    if r.returncode:
        raise FetchError(f"apt-get update failed: {r.stderr.strip()[-400:]}")


def xen_package() -> str:
    """The newest ``xen-hypervisor-<version>-amd64`` apt knows (apt-get update if none)."""
    for attempt in range(2):
        r = _run(["apt-cache", "search", "--names-only", r"^xen-hypervisor-[0-9.]*-amd64$"])
        names = [line.split(" - ")[0].strip() for line in r.stdout.splitlines()]
        found = sorted((tuple(int(x) for x in m.group(1).split(".")), n)
                       for n in names if (m := XEN_PACKAGE_RE.match(n)))
        if found:
            return found[-1][1]
        if attempt == 0:
            _apt_update()
    raise FetchError("no xen-hypervisor-*-amd64 package in the apt sources")


def fetch_package(name: str, cache: Path) -> Path:
    """Download ``name`` with apt-get and unpack it under ``cache/pkgs/name``."""
    root = cache / "pkgs" / name
    stamp = root / ".unpacked"
    if stamp.exists():
        return root
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        r = _run(["apt-get", "download", name], cwd=debs)
        if r.returncode == 0:
            break
        if attempt == 0 and "Unable to locate" in r.stderr + r.stdout:
            _apt_update()
            continue
        raise FetchError(f"apt-get download {name} failed: {(r.stderr or r.stdout).strip()[-400:]}")
    deb = max(debs.glob(f"{name}_*.deb"), key=lambda p: p.stat().st_mtime)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    r = _run(["dpkg-deb", "-x", str(deb), str(root)])
    if r.returncode:
        raise FetchError(f"dpkg-deb -x {deb.name} failed: {r.stderr.strip()}")
    stamp.write_text(deb.name + "\n")
    return root


def build_xen(cache: Path) -> dict[str, Path]:
    """xen/xen.elf (gunzipped hypervisor) and xen/dom0-placeholder."""
    out = cache / "xen"
    elf, module = out / "xen.elf", out / "dom0-placeholder"
    if not (elf.exists() and module.exists()):
        package = xen_package()
        root = fetch_package(package, cache)
        images = sorted((root / "boot").glob("xen-*-amd64.gz"))
        if not images:
            raise FetchError(f"{package} has no /boot/xen-*-amd64.gz")
        out.mkdir(parents=True, exist_ok=True)
        elf.write_bytes(gzip.decompress(images[0].read_bytes()))
        module.write_bytes(DOM0_PLACEHOLDER)
        (out / "package.txt").write_text((root / ".unpacked").read_text())
    return {"kernel": elf, "module": module}


def _grub_mkimage() -> str:
    tool = shutil.which("grub-mkimage")
    if tool:
        return tool
    if os.geteuid() != 0:
        raise FetchError("grub-mkimage is missing (apt-get install grub-common needs root)")
    r = _run(["apt-get", "install", "-y", "-qq", "grub-common"])
    if r.returncode:
        _apt_update()
        r = _run(["apt-get", "install", "-y", "-qq", "grub-common"])
    tool = shutil.which("grub-mkimage")
    if r.returncode or not tool:
        raise FetchError(f"apt-get install grub-common failed: {r.stderr.strip()[-400:]}")
    return tool


def _coreboot_image(cache: Path, name: str, config: Path, files: dict[str, Path]) -> Path:
    """grub/<name>: a GRUB i386-coreboot core image with the embedded serial-console config
    and a memdisk holding ``config`` as boot/grub/grub.cfg plus ``files`` (arcname -> path);
    rebuilt when any input is newer."""
    out = cache / "grub"
    image = out / name
    sources = [HERE / "grub" / "embedded.cfg", config, *files.values()]
    if image.exists() and all(image.stat().st_mtime >= s.stat().st_mtime for s in sources):
        return image
    root = fetch_package("grub-coreboot-bin", cache)
    modules_dir = root / "usr" / "lib" / "grub" / "i386-coreboot"
    out.mkdir(parents=True, exist_ok=True)
    memdisk = out / f"{image.stem}-memdisk.tar"
    with tarfile.open(memdisk, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(config, arcname="boot/grub/grub.cfg")
        for arcname, path in files.items():
            tar.add(path, arcname=arcname)
    r = _run([_grub_mkimage(), "-O", "i386-coreboot", "-d", str(modules_dir), "-o", str(image),
              "-c", str(HERE / "grub" / "embedded.cfg"), "-m", str(memdisk),
              "-p", "(memdisk)/boot/grub", *GRUB_MODULES])
    if r.returncode:
        raise FetchError(f"grub-mkimage failed: {r.stderr.strip()[-400:]}")
    return image


def build_grub(cache: Path, hello: Path = HELLO_ELF) -> dict[str, Path]:
    """grub/grub-coreboot.elf: GRUB running grub/grub.cfg, which boots hvdbg's hello.elf."""
    if not hello.exists():
        raise FetchError(f"{hello} is missing: build the guests first (make -C guests)")
    return {"kernel": _coreboot_image(cache, "grub-coreboot.elf", HERE / "grub" / "grub.cfg",
                                      {"hello.elf": hello})}


def build_grub_xen(cache: Path) -> dict[str, Path]:
    """grub/grub-xen.elf: GRUB running grub/grub-xen.cfg, which boots Xen and its module."""
    xen = build_xen(cache)
    return {"kernel": _coreboot_image(cache, "grub-xen.elf", HERE / "grub" / "grub-xen.cfg",
                                      {"xen.elf": xen["kernel"], "dom0-placeholder": xen["module"]})}


def build_invaders(cache: Path) -> dict[str, Path]:
    """invaders/invaders.exec: grub-invaders, a multiboot 1 game (a.out kludge at 1 MiB)
    that draws on the VGA text screen and reads the PS/2 keyboard."""
    out = cache / "invaders"
    image = out / "invaders.exec"
    if not image.exists():
        root = fetch_package("grub-invaders", cache)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "boot" / "invaders.exec", image)
    return {"kernel": image}


BUILDERS = {"xen": build_xen, "grub": build_grub, "grub-xen": build_grub_xen, "invaders": build_invaders}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("what", nargs="*", help=f"what to build: {', '.join(BUILDERS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [w for w in args.what if w not in BUILDERS]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)} (choose from {', '.join(BUILDERS)})")
    try:
        for name in args.what or BUILDERS:
            for role, path in BUILDERS[name](args.cache).items():
                print(f"{name}: {role} {path}")
    except FetchError as e:
        print(f"fetch: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
