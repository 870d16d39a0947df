"""Build the guest kernels (``make -C guests``) and boot them under QEMU.

QEMU is the reference machine for the guest contract (guests/README.md): if a
kernel behaves here, a difference under hvdbg is hvdbg's. The ELF checks at
the top need no QEMU; the boot tests are skipped when qemu-system-x86_64 is
not installed (``apt-get install qemu-system-x86``), the multiboot 2 boot also
when GRUB's ISO tools are missing (``apt-get install grub-pc-bin xorriso``).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

REPO = Path(__file__).resolve().parent.parent
GUESTS = REPO / "guests"
BUILD = GUESTS / "build"

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")

KERNEL_BASE = 0xFFFFFF8000000000
KERNEL_PHYS = 0x100000
MB1_HEADER_MAGIC = 0x1BADB002
MB1_FLAG_MEMINFO = 1 << 1
MB1_FLAG_AOUT_KLUDGE = 1 << 16
MB2_HEADER_MAGIC = 0xE85250D6
U64_MASK = (1 << 64) - 1
DEFAULT_WORK_ENTRIES = 65536
PTE_PRESENT = 1 << 0
PTE_PAGE_SIZE = 1 << 7
PTE_PCD = 1 << 4
BOOT_TIMEOUT_S = 60


def work_value(index: int) -> int:
    """Mirror of work_value() in guests/smp/work.h."""
    return ((index * 2654435761) ^ (index << 17)) & U64_MASK


def expected_sum(entries: int) -> int:
    return sum(work_value(i) for i in range(entries)) & U64_MASK


@pytest.fixture(scope="module")
def guests_built() -> Path:
    """Build all guest kernels once per test module."""
    result = subprocess.run(["make", "-C", str(GUESTS)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return BUILD


# --------------------------------------------------------------------------
# Static checks of the images (no QEMU needed)
# --------------------------------------------------------------------------


def elf_symbols(path: Path) -> dict[str, int]:
    with path.open("rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return {sym.name: sym["st_value"] for sym in symtab.iter_symbols() if sym.name}


def read_virtual(path: Path, vaddr: int, size: int) -> bytes:
    """Bytes at a virtual address, read through the program headers."""
    with path.open("rb") as f:
        elf = ELFFile(f)
        for seg in elf.iter_segments(type="PT_LOAD"):
            if seg["p_vaddr"] <= vaddr and vaddr + size <= seg["p_vaddr"] + seg["p_filesz"]:
                f.seek(seg["p_offset"] + vaddr - seg["p_vaddr"])
                return f.read(size)
    raise AssertionError(f"0x{vaddr:x} is not file-backed in {path.name}")


def find_multiboot1_header(data: bytes) -> tuple[int, tuple[int, ...]]:
    """Offset and the 8 words of the Multiboot 1 header (spec 3.1: first 8 KiB, 4-aligned)."""
    for offset in range(0, min(len(data), 8192) - 32, 4):
        words = struct.unpack_from("<8I", data, offset)
        if words[0] == MB1_HEADER_MAGIC and (words[0] + words[1] + words[2]) & 0xFFFFFFFF == 0:
            return offset, words
    raise AssertionError("no multiboot 1 header in the first 8 KiB")


def test_smp_elf_is_high_half_elf64_with_symbols(guests_built: Path) -> None:
    path = guests_built / "smp.elf"
    with path.open("rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == 64 and elf["e_machine"] == "EM_X86_64"
        loads = list(elf.iter_segments(type="PT_LOAD"))
        assert len(loads) == 1
        assert loads[0]["p_vaddr"] == KERNEL_BASE + KERNEL_PHYS
        assert loads[0]["p_paddr"] == KERNEL_PHYS
        entry = elf["e_entry"]
    symbols = elf_symbols(path)
    for name in ("_start", "bad_magic_halt", "boot_pml4", "long_mode_entry", "kmain", "ap_entry",
                 "ap_start64", "ap_stacks", "ap_trampoline_start", "ap_trampoline_end", "mb_header"):
        assert name in symbols, name
    for name in ("kmain", "ap_entry", "long_mode_entry", "boot_pml4"):
        assert symbols[name] >= KERNEL_BASE + KERNEL_PHYS
    assert entry == symbols["_start"] - KERNEL_BASE
    assert symbols["ap_trampoline_end"] - symbols["ap_trampoline_start"] < 4096


def test_smp_multiboot_header_uses_aout_kludge(guests_built: Path) -> None:
    path = guests_built / "smp.elf"
    data = path.read_bytes()
    offset, words = find_multiboot1_header(data)
    _, flags, _, header_addr, load_addr, load_end, bss_end, entry_addr = words
    symbols = elf_symbols(path)
    assert flags == MB1_FLAG_AOUT_KLUDGE | MB1_FLAG_MEMINFO
    assert header_addr == symbols["mb_header"] - KERNEL_BASE
    assert load_addr == KERNEL_PHYS
    assert entry_addr == symbols["_start"] - KERNEL_BASE
    assert load_addr <= header_addr < load_end <= bss_end
    # The loader copies the file from (offset - (header_addr - load_addr)):
    # that must be exactly the bytes the ELF places at load_addr.
    image_offset = offset - (header_addr - load_addr)
    image = data[image_offset:image_offset + (load_end - load_addr)]
    assert image == read_virtual(path, KERNEL_BASE + load_addr, load_end - load_addr)
    # 32-bit entry starts with `cmp $0x2badb002, %eax` (3d imm32).
    entry_bytes = data[image_offset + entry_addr - load_addr:][:5]
    assert entry_bytes == b"\x3d" + struct.pack("<I", 0x2BADB002)


def boot_page_tables(path: Path) -> tuple[list[int], dict[str, int]]:
    symbols = elf_symbols(path)
    pml4 = list(struct.unpack("<512Q", read_virtual(path, symbols["boot_pml4"], 4096)))
    return pml4, symbols


def table_at(path: Path, entry: int) -> list[int]:
    phys = entry & 0x000FFFFFFFFFF000
    return list(struct.unpack("<512Q", read_virtual(path, KERNEL_BASE + phys, 4096)))


def test_boot_pml4_maps_low_1g_high_half_and_apic_with_2m_pages(guests_built: Path) -> None:
    path = guests_built / "smp.elf"
    pml4, _ = boot_page_tables(path)
    assert [i for i, e in enumerate(pml4) if e & PTE_PRESENT] == [0, 511]
    pdpt_low, pdpt_high = table_at(path, pml4[0]), table_at(path, pml4[511])
    assert [i for i, e in enumerate(pdpt_low) if e & PTE_PRESENT] == [0, 3]
    assert [i for i, e in enumerate(pdpt_high) if e & PTE_PRESENT] == [0]
    assert not any(e & PTE_PAGE_SIZE for e in pdpt_low + pdpt_high), "no 1 GiB pages"
    pd_low = table_at(path, pdpt_low[0])
    assert pdpt_high[0] == pdpt_low[0], "high half maps the same first GiB"
    assert all(e & PTE_PRESENT and e & PTE_PAGE_SIZE for e in pd_low)
    assert [e & ~0xFFF for e in pd_low] == [i << 21 for i in range(512)]
    pd_apic = table_at(path, pdpt_low[3])
    apic_index = (0xFEE00000 >> 21) & 511
    ioapic_index = (0xFEC00000 >> 21) & 511
    assert [i for i, e in enumerate(pd_apic) if e & PTE_PRESENT] == [ioapic_index, apic_index]
    assert pd_apic[apic_index] & ~0xFFF == 0xFEE00000 and pd_apic[ioapic_index] & ~0xFFF == 0xFEC00000
    assert all(pd_apic[i] & PTE_PCD and pd_apic[i] & PTE_PAGE_SIZE for i in (ioapic_index, apic_index))


def test_bug_image_lacks_only_the_high_half_entry(guests_built: Path) -> None:
    good, _ = boot_page_tables(guests_built / "smp.elf")
    bad, _ = boot_page_tables(guests_built / "smp-bug-pml4.elf")
    assert bad[511] == 0 and good[511] & PTE_PRESENT
    assert bad[:511] == good[:511]


def test_hello_kernels_are_elf32_with_their_multiboot_headers(guests_built: Path) -> None:
    mb1 = (guests_built / "hello.elf").read_bytes()
    _, words = find_multiboot1_header(mb1)
    assert not words[1] & MB1_FLAG_AOUT_KLUDGE
    mb2 = (guests_built / "hello-mb2.elf").read_bytes()
    for path, data in (("hello.elf", mb1), ("hello-mb2.elf", mb2)):
        assert data[4] == 1, f"{path} is ELF32"
    # Multiboot2 spec 3.1.1: 8-aligned in the first 32 KiB, fields sum to 0 mod 2^32.
    offsets = [o for o in range(0, min(len(mb2), 32768) - 16, 8)
               if struct.unpack_from("<I", mb2, o)[0] == MB2_HEADER_MAGIC]
    assert offsets
    magic, arch, length, checksum = struct.unpack_from("<4I", mb2, offsets[0])
    assert arch == 0 and (magic + arch + length + checksum) & 0xFFFFFFFF == 0
    assert struct.unpack_from("<HHI", mb2, offsets[0] + length - 8) == (0, 0, 8)


# --------------------------------------------------------------------------
# Boots under QEMU
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class QemuRun:
    lines: list[str]
    returncode: int
    seconds: float
    log: str

    @property
    def debug_exit_status(self) -> int | None:
        """isa-debug-exit makes QEMU exit with (status << 1) | 1 (8 bits survive)."""
        if self.returncode & 1:
            return self.returncode >> 1
        return None


def run_qemu(tmp_path: Path, boot: list[str], *, smp: int = 1, mem_mib: int = 128,
             append: str | None = None, log_items: str | None = None) -> QemuRun:
    serial = tmp_path / "serial.txt"
    log = tmp_path / "qemu.log"
    cmd = [QEMU, *boot, "-smp", str(smp), "-m", str(mem_mib), "-display", "none",
           "-monitor", "none", "-no-reboot", "-serial", f"file:{serial}",
           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
    if append is not None:
        cmd += ["-append", append]
    if log_items:
        cmd += ["-d", log_items, "-D", str(log)]
    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=BOOT_TIMEOUT_S)
    seconds = time.monotonic() - start
    lines = serial.read_text(errors="replace").splitlines() if serial.exists() else []
    return QemuRun(lines, result.returncode, seconds,
                   log.read_text(errors="replace") if log.exists() else result.stderr)


def boot_kernel(tmp_path: Path, kernel: Path, **kwargs: object) -> QemuRun:
    return run_qemu(tmp_path, ["-kernel", str(kernel)], **kwargs)  # type: ignore[arg-type]


MULTIBOOT_LINE = re.compile(r"^multiboot: magic 0x2badb002 mem_upper (\d+) KiB cmdline '(.*)'$")
WORK_LINE = re.compile(r"^work: (\d+) entries \((\d+) KiB\) at phys 0x([0-9a-f]+)-0x([0-9a-f]+)$")


def multiboot_line(run: QemuRun) -> tuple[int, str]:
    matches = [m for m in map(MULTIBOOT_LINE.match, run.lines) if m]
    assert len(matches) == 1, run.lines
    return int(matches[0].group(1)), matches[0].group(2)


def work_range(run: QemuRun) -> tuple[int, int, int]:
    matches = [m for m in map(WORK_LINE.match, run.lines) if m]
    assert len(matches) == 1, run.lines
    m = matches[0]
    return int(m.group(1)), int(m.group(3), 16), int(m.group(4), 16)


@needs_qemu
def test_hello_multiboot1_under_qemu(guests_built: Path, tmp_path: Path) -> None:
    run = boot_kernel(tmp_path, guests_built / "hello.elf")
    assert run.lines == ["Hello from hvdbg (multiboot 1)", "magic 0x2badb002"]
    assert run.debug_exit_status == 0


GRUB_I386_PC = Path("/usr/lib/grub/i386-pc")


@needs_qemu
@pytest.mark.skipif(shutil.which("grub-mkrescue") is None or shutil.which("xorriso") is None
                    or not GRUB_I386_PC.is_dir(),
                    reason="QEMU -kernel has no multiboot 2 loader; GRUB ISO tools "
                           "(grub-pc-bin, xorriso) are not installed")
def test_hello_multiboot2_under_qemu_via_grub(guests_built: Path, tmp_path: Path) -> None:
    iso_root = tmp_path / "iso"
    (iso_root / "boot" / "grub").mkdir(parents=True)
    shutil.copy(guests_built / "hello-mb2.elf", iso_root / "boot" / "hello-mb2.elf")
    (iso_root / "boot" / "grub" / "grub.cfg").write_text(
        "set timeout=0\nset default=0\n"
        'menuentry "hello-mb2" {\n    multiboot2 /boot/hello-mb2.elf\n    boot\n}\n')
    iso = tmp_path / "hello-mb2.iso"
    made = subprocess.run(["grub-mkrescue", "-o", str(iso), str(iso_root)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    run = run_qemu(tmp_path, ["-cdrom", str(iso)])
    assert run.lines == ["Hello from hvdbg (multiboot 2)", "magic 0x36d76289"]
    assert run.debug_exit_status == 0


@needs_qemu
@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_smp_boots_all_cpus_and_sums(guests_built: Path, tmp_path: Path, cpus: int) -> None:
    kernel = guests_built / "smp.elf"
    run = boot_kernel(tmp_path, kernel, smp=cpus)
    mem_upper, cmdline = multiboot_line(run)
    assert cmdline.split() == [str(kernel)]  # QEMU passes the kernel path first
    assert 120 * 1024 < mem_upper < 128 * 1024
    assert f"acpi: MADT lists {cpus} enabled CPUs, APIC ids: {' '.join(map(str, range(cpus)))}" in run.lines
    assert "lapic: BSP APIC id 0" in run.lines
    online = [line.split(",")[0] for line in run.lines if line.startswith("CPU ") and " online" in line]
    assert sorted(online) == [f"CPU {n} (APIC id {n}) online" for n in range(1, cpus)]
    released = [line for line in run.lines if line.startswith("CPU ") and " released" in line]
    assert len(released) == cpus - 1
    assert f"smp: {cpus} of {cpus} CPUs online" in run.lines
    entries, first, _ = work_range(run)
    assert entries == DEFAULT_WORK_ENTRIES
    assert first >= KERNEL_PHYS and first % 4096 == 0
    assert run.lines[-1] == f"sum ok {expected_sum(entries)}"
    assert run.debug_exit_status == 0


@needs_qemu
def test_smp_selftest(guests_built: Path, tmp_path: Path) -> None:
    run = boot_kernel(tmp_path, guests_built / "smp.elf", smp=4, append="selftest")
    _, cmdline = multiboot_line(run)
    assert cmdline.split()[1:] == ["selftest"]
    tail = [line for line in run.lines[run.lines.index("smp: 4 of 4 CPUs online"):]
            if " released: " not in line]
    assert tail == ["smp: 4 of 4 CPUs online", "selftest: int3 ok", "selftest: timer ok",
                    "selftest: ipi ok", f"sum ok {expected_sum(DEFAULT_WORK_ENTRIES)}"]
    assert run.debug_exit_status == 0


@needs_qemu
def test_smp_pit_through_the_8259a_under_qemu(guests_built: Path, tmp_path: Path) -> None:
    """The ``pit_via=pic`` routing hvdbg is tested with (test_platform_pit_ioapic.py), on
    QEMU's i8259 and APIC: the ticks reach only the CPU whose LINT0 is in ExtINT mode,
    with no spurious IR7, and the shared counter stays exact. (QEMU's TSC follows host
    time, so the guest's 1% period check is not asserted here.)"""
    run = boot_kernel(tmp_path, guests_built / "smp.elf", smp=4, append="workload=pit pit_via=pic pit_cpu=2")
    text = "\n".join(run.lines)
    assert "pit: IRQ 0 -> 8259A IR0 -> LINT0 (ExtINT) of CPU 2, vector 0x48" in text, text[-800:]
    m = re.search(r"pit: (\d+) interrupts on CPU 2 \(APIC id 2\), (\d+) on the other 3 CPUs", text)
    assert m and int(m.group(1)) >= 20 and m.group(2) == "0", text[-800:]
    shared = re.search(r"pit: shared counter (\d+) = (\d+) lock incq by the other CPUs \+ (\d+) by", text)
    assert shared and int(shared.group(1)) == int(shared.group(2)) + int(shared.group(3))
    assert "pit: 0 spurious 8259A interrupts" in text


@needs_qemu
@pytest.mark.parametrize("route", ["", " rtc_via=pic"])
def test_smp_rtc_periodic_interrupt_under_qemu(guests_built: Path, tmp_path: Path, route: str) -> None:
    """The ``rtc_ticks`` check hvdbg is tested with (test_platform_rtc.py), on QEMU's
    mc146818rtc: IRQ 8 reaches the BSP through I/O APIC pin 8 or through the slave 8259A
    and the cascade. (Its timing check follows QEMU's host-time TSC: not asserted.)"""
    run = boot_kernel(tmp_path, guests_built / "smp.elf", smp=2, append=f"rtc_ticks=20{route}")
    text = "\n".join(run.lines)
    path = "the 8259A (IRQ 8)" if route else "I/O APIC pin 8"
    m = re.search(r"rtc: (\d+) periodic interrupts through (.+?), (\d+) without PF", text)
    assert m and int(m.group(1)) >= 20 and m.group(2) == path and int(m.group(3)) <= 1, text[-800:]


@needs_qemu
def test_smp_work_mib_sizes_the_array(guests_built: Path, tmp_path: Path) -> None:
    run = boot_kernel(tmp_path, guests_built / "smp.elf", smp=4, append="work_mib=8")
    entries, first, last = work_range(run)
    assert entries == 8 * 1024 * 1024 // 8
    assert last - first + 1 == 8 * 1024 * 1024
    assert run.lines[-1] == f"sum ok {expected_sum(entries)}"
    assert run.debug_exit_status == 0


@needs_qemu
def test_smp_work_mib_beyond_ram_is_not_checked(guests_built: Path, tmp_path: Path) -> None:
    """16 MiB of RAM, a 32 MiB array: the bump allocator ignores the memory map.

    QEMU has no EPT: writes past the end of RAM are dropped and reads return
    something else, so the guest only notices through a wrong sum. Under
    hvdbg the same run shows an EPT violation for the first unbacked page.
    """
    run = boot_kernel(tmp_path, guests_built / "smp.elf", smp=4, mem_mib=16, append="work_mib=32")
    mem_upper, _ = multiboot_line(run)
    entries, _, last = work_range(run)
    ram_end = (1024 + mem_upper) * 1024
    assert last >= ram_end + 16 * 1024 * 1024
    bad = [line for line in run.lines if line.startswith("sum ")]
    assert len(bad) == 1
    got, expected = re.fullmatch(r"sum BAD got (\d+) expected (\d+)", bad[0]).groups()  # type: ignore[union-attr]
    assert int(expected) == expected_sum(entries) and int(got) != int(expected)
    assert run.debug_exit_status == 1


@needs_qemu
def test_smp_missing_aps_exit_status_2(guests_built: Path, tmp_path: Path) -> None:
    run = boot_kernel(tmp_path, guests_built / "smp.elf", smp=4, append="max_aps=1")
    assert any(line.startswith("CPU 1 (APIC id 1) online") for line in run.lines)
    assert "smp: APIC id 2 not started (max_aps=1)" in run.lines
    assert run.lines[-2:] == ["smp: 2 of 4 CPUs online", "smp: 2 CPUs missing"]
    assert run.debug_exit_status == 2


@needs_qemu
def test_smp_page_fault_is_reported_by_the_idt(guests_built: Path, tmp_path: Path) -> None:
    """A 1 GiB array runs off the 1 GiB boot mapping: #PF at exactly KERNEL_BASE + 1 GiB."""
    run = boot_kernel(tmp_path, guests_built / "smp.elf", mem_mib=1024, append="work_mib=1024")
    m = re.fullmatch(r"EXCEPTION #PF vector 14 error 0x([0-9a-f]+) rip 0x([0-9a-f]+) "
                     r"cr2 0x([0-9a-f]+) rsp 0x([0-9a-f]+) apic 0", run.lines[-1])
    assert m, run.lines
    error, rip, cr2 = (int(g, 16) for g in m.groups()[:3])
    assert error == 0x2  # write to a not-present page, supervisor
    assert cr2 == KERNEL_BASE + 0x40000000
    symbols = elf_symbols(guests_built / "smp.elf")
    assert symbols["work_prepare"] <= rip < symbols["work_set_cpus"]
    # status 0x80 + 14; QEMU keeps only the low 8 bits of (status << 1) | 1
    assert run.returncode == ((0x80 + 14) << 1 | 1) & 0xFF


@needs_qemu
def test_smp_bug_pml4_triple_faults(guests_built: Path, tmp_path: Path) -> None:
    run = boot_kernel(tmp_path, guests_built / "smp-bug-pml4.elf", smp=4, log_items="cpu_reset,int")
    assert run.lines == []  # dies before the first serial write
    assert run.returncode == 0  # -no-reboot: the reset request ends QEMU, no debug exit
    assert "Triple fault" in run.log
    # The first exception is the #PF on the fetch at long_mode_entry.
    first_pf = re.search(r"v=0e e=([0-9a-f]+) i=0 cpl=0 IP=0018:([0-9a-f]+) pc=[0-9a-f]+ SP=[^ ]+ "
                         r"CR2=([0-9a-f]+)", run.log)
    assert first_pf, run.log[:2000]
    long_mode_entry = elf_symbols(guests_built / "smp-bug-pml4.elf")["long_mode_entry"]
    assert int(first_pf.group(2), 16) == long_mode_entry
    assert int(first_pf.group(3), 16) == long_mode_entry
    # not present, supervisor read (I/D is only reported with EFER.NXE set)
    assert int(first_pf.group(1), 16) == 0


@needs_qemu
def test_smp_vmx_workload_sees_no_vmx_under_qemu_tcg(guests_built: Path, tmp_path: Path) -> None:
    """QEMU TCG offers no VMX: ``workload=vmx`` finds CPUID.1:ECX.VMX = 0 on 4 CPUs and
    ends normally (what hvdbg without ``+vmx`` shows too, tests/test_nested_vmx_guest.py)."""
    run = boot_kernel(tmp_path, guests_built / "smp.elf", smp=4, append="workload=vmx")
    assert "vmx: not offered" in run.lines, run.lines[-10:]
    assert run.debug_exit_status == 0
