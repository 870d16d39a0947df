"""Tiny test guests written in C, built at test time with the host's gcc -m32 into a
Multiboot 1 a.out-kludge image (runs under hvdbg and under QEMU's -kernel alike).

The C file gets ``inb/outb/inw/outw/inl/outl``, ``putc``/``puts``/``put_hex`` on COM1 and
``exit_status(v)`` (port 0xF4); ``void main(void)`` runs on a stack at 3 MiB in 32-bit
protected mode with paging off, as Multiboot 0.6.96 3.2 leaves it."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

LOAD = 0x100000
MB1_MAGIC = 0x1BADB002
AOUT_KLUDGE = 1 << 16

PRELUDE = r"""
typedef unsigned char u8; typedef unsigned short u16; typedef unsigned int u32;
typedef unsigned long long u64;
static inline void outb(u16 p, u8 v) { __asm__ volatile("outb %0,%1" :: "a"(v), "Nd"(p)); }
static inline void outw(u16 p, u16 v) { __asm__ volatile("outw %0,%1" :: "a"(v), "Nd"(p)); }
static inline void outl(u16 p, u32 v) { __asm__ volatile("outl %0,%1" :: "a"(v), "Nd"(p)); }
static inline u8 inb(u16 p) { u8 v; __asm__ volatile("inb %1,%0" : "=a"(v) : "Nd"(p)); return v; }
static inline u16 inw(u16 p) { u16 v; __asm__ volatile("inw %1,%0" : "=a"(v) : "Nd"(p)); return v; }
static inline u32 inl(u16 p) { u32 v; __asm__ volatile("inl %1,%0" : "=a"(v) : "Nd"(p)); return v; }
static inline u32 mmio_read32(u32 a) { return *(volatile u32 *)a; }
static inline void mmio_write32(u32 a, u32 v) { *(volatile u32 *)a = v; }
static void putc(char c) { outb(0x3f8, c); }
static void puts(const char *s) { while (*s) putc(*s++); }
static void put_hex(u64 v) {
    puts("0x"); for (int i = 60; i >= 0; i -= 4) putc("0123456789abcdef"[(v >> i) & 15]);
}
__attribute__((used, noreturn)) void exit_status(u32 v) { outl(0xf4, v); for (;;) __asm__ volatile("cli; hlt"); }
void *memset(void *d, int c, unsigned n) { u8 *p = d; while (n--) *p++ = c; return d; }
void *memcpy(void *d, const void *s, unsigned n) { u8 *p = d; const u8 *q = s; while (n--) *p++ = *q++; return d; }
void main(void);
__asm__(".globl _start\n_start: mov $0x300000, %esp\n call main\n push $0\n call exit_status\n");
"""


def build_guest(tmp_path: Path, source: str, name: str = "guest") -> Path:
    """Compile ``source`` (C, after the prelude) into ``tmp_path/name.bin``."""
    if shutil.which("gcc") is None or shutil.which("objcopy") is None:
        pytest.skip("gcc and objcopy are needed to build the test guest")
    c = tmp_path / f"{name}.c"
    elf = tmp_path / f"{name}.elf"
    raw = tmp_path / f"{name}.raw"
    c.write_text(PRELUDE + source)
    proc = subprocess.run(["gcc", "-m32", "-O1", "-ffreestanding", "-fno-pic", "-fno-pie", "-no-pie", "-nostdlib",
                    "-static", "-fno-asynchronous-unwind-tables", "-fno-stack-protector",
                    f"-Wl,-Ttext={LOAD + 0x20:#x}", "-Wl,--build-id=none", "-Wl,-N", "-Wl,--no-warn-rwx-segments", "-o", str(elf), str(c)],
                   check=False, capture_output=True, text=True)
    if proc.returncode:
        raise AssertionError(f"the test guest does not compile:\n{proc.stderr}")
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", "-j", ".rodata", "-j", ".data",
                    str(elf), str(raw)], check=True)
    entry = _symbol(elf, "_start")
    header = struct.pack("<8I", MB1_MAGIC, AOUT_KLUDGE, (-(MB1_MAGIC + AOUT_KLUDGE)) & 0xFFFFFFFF,
                         LOAD, LOAD, 0, 0, entry)
    out = tmp_path / f"{name}.bin"
    out.write_bytes(header + raw.read_bytes())
    return out


def _symbol(elf: Path, name: str) -> int:
    text = subprocess.run(["nm", str(elf)], check=True, capture_output=True, text=True).stdout
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise AssertionError(f"{name} not in {elf}")


def run_qemu(kernel: Path, *, smp: int = 1, memory: str = "128M", timeout: float = 30.0,
             extra: tuple[str, ...] = ()) -> tuple[int, str]:
    """Run ``kernel`` under QEMU TCG with isa-debug-exit at 0xF4: (exit status, serial)."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    proc = subprocess.run([qemu, "-nodefaults", "-no-reboot", "-display", "none", "-machine", "accel=tcg",
                           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4", "-serial", "stdio",
                           "-m", memory, "-smp", str(smp), "-kernel", str(kernel), *extra],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout
