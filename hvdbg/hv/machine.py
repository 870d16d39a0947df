"""A virtual machine: guest memory + EPT, vCPUs, platform devices and the VMM, wired
together from a :class:`~hvdbg.config.VmConfig` (the VMM-level composition, like
Firecracker's ``Vmm`` builder).  Running it is the executors' job (hvdbg.run.executors)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hvdbg.platform import multiboot
from hvdbg.vmx.bitmaps import IoBitmaps, MsrBitmap
from hvdbg.platform.firmware.acpi import ACPI_BASE, ACPI_END, install_acpi
from hvdbg.config import VmConfig
from hvdbg.arch.cpuid import CpuidModel, parse_cpu_spec
from hvdbg.platform.devices.ata import DiskImage
from hvdbg.platform.board import build_pc_board
from hvdbg.platform.devices import IoBus
from hvdbg.platform.firmware.bda import VGA_WINDOW, install_bda, install_ivt
from hvdbg.platform.firmware.coreboot import Range, install_coreboot_table
from hvdbg.platform.firmware.mptable import install_mptable
from hvdbg.platform.devices.uart_loopback import Uart16550Loopback
from hvdbg.errors import GuestLoadError
from hvdbg.engine.cpu import ExecutionTurns
from hvdbg.platform.apic import ApicBus
from hvdbg.platform.ioapic import IOAPIC_BASE
from hvdbg.platform.memory import GuestMemory
from hvdbg.platform.multiboot.memmap import LOW_MEMORY_END
from hvdbg.platform.symbols import SymbolTable
from hvdbg.hv.trace import ExitTrace
from hvdbg.arch.segments import flat_segments_32
from hvdbg.hv.vcpu import Vcpu
from hvdbg.hv.faults import InjectedFaults
from hvdbg.hv.vmm import Vmm, msr_bitmap_exiting



@dataclass
class Ending:
    """How the run ended (set once, by the first thing that ends it)."""

    outcome: str
    status: int | None = None
    detail: str = ""
    at: float = field(default_factory=time.monotonic)


class Machine:
    """One VM.  Implements the VMM's Lifecycle (``vcpus``, ``end``, ``ended``)."""

    def __init__(self, config: VmConfig) -> None:
        self.config = config
        self.ending: Ending | None = None
        self._end_lock = threading.Lock()
        self.ended_event = threading.Event()
        self.input_open = False     # a source (stdin) may still send serial input: no hang
        self.trace = ExitTrace()
        self.memory = GuestMemory(config["memory"], config["gpa_hpa_offset"])
        self.bus = IoBus()
        self.apic_bus = ApicBus()
        self.uart = Uart16550Loopback(sink=self._echo if config["output.echo_serial"] else None)
        self.board = build_pc_board(self.bus, ram_size=config["memory"], uart=self.uart,
                                    apic_bus=self.apic_bus, clock=self.virtual_time,
                                    on_debug_exit=lambda status: self.end(
                                        "exited", status=status, detail="guest wrote to the debug-exit port"))
        self.debug_exit, self.pit, self.vga = self.board.debug_exit, self.board.pit, self.board.vga
        self.faults = InjectedFaults.from_config(config)
        self.ioapic = self.board.ioapic
        self.vmm = Vmm(self, self.bus, self.trace, mmio=self.board.mmio,
                       sipi_offset=self.faults.sipi_offset(config["gpa_hpa_offset"]))
        self.vmm.preemption_timer = config["vmx.preemption_timer"]
        self.kernel_path = Path(config["kernel"])
        self.kernel_image = self._read(self.kernel_path, "kernel")
        self.symbols = SymbolTable(self.kernel_image)
        self._guest_symbols: SymbolTable | None = None    # a guest hypervisor's guest's (symbols_for)
        n = config["vcpus"]
        self.apic_ids = list(range(n))
        self.acpi = install_acpi(self.memory, self.apic_ids, fadt=config["platform.acpi_pm"],
                                 ioapic=(self.ioapic.id, IOAPIC_BASE))
        if config["disk"]:
            self.board.add_ata(self._disk_image(Path(config["disk"]), config["disk_write_back"]))
        if config["platform.acpi_pm"]:
            self.board.add_acpi_pm(self.virtual_time, lambda: self.end(
                "exited", detail="the guest entered ACPI S5 (soft off) through PM1a_CNT"))
        spec = parse_cpu_spec(config["cpu"])
        x2apic = config["cpuid.x2apic"] or "x2apic" in spec.features
        model = dict(vcpu_count=n, x2apic=x2apic, features=tuple(f for f in spec.features if f != "x2apic"),
                     engine_model=spec.model.engine_model)
        signature, _ebx, _ecx, features = CpuidModel(apic_id=0, **model).query(1, 0)
        self.mptable = install_mptable(self.memory, self.apic_ids, cpu_signature=signature,
                                       cpu_features=features, ioapic_id=self.ioapic.id)
        self.bda = install_bda(self.memory, LOW_MEMORY_END, VGA_WINDOW)
        self.bios_stub = install_ivt(self.memory)
        self.boot = self._load_kernel()
        if config["platform.fw_cfg"]:
            self.board.add_fw_cfg(ram_size=config["memory"], nb_cpus=n,
                                  e820=[(r.base, r.length, r.type) for r in self.boot.memory_map])
        self.cbtable = install_coreboot_table(
            self.memory, [Range(r.base, r.length, r.type) for r in self.boot.memory_map])
        self.io_bitmaps = IoBitmaps.allocate(self.memory.host, self.memory.alloc_page)   # every port exits
        self.io_bitmaps.set(config["vmx.io_passthrough"], exiting=False)
        self.msr_bitmap = MsrBitmap.allocate(self.memory.host, self.memory.alloc_page)   # the VMM's MSRs exit
        self.msr_bitmap.set(sorted(msr_bitmap_exiting()), exiting=True)
        self.turns = ExecutionTurns()   # one engine executes at a time (hvdbg.engine.cpu)
        self.vcpus: list[Vcpu] = []
        for i in range(n):
            cpuid_id = self.faults.cpuid_apic_id(self.apic_ids[i])
            cpuid = CpuidModel(apic_id=cpuid_id, **model)
            v = Vcpu(i, self.apic_ids[i], self.memory, self.vmm, cpuid, bsp=(i == 0),
                     x2apic=x2apic, send_ipi=self.apic_bus.send, turns=self.turns,
                     mmio_ranges=self.board.mmio.ranges())
            v.apic.on_level_eoi = self.ioapic.eoi   # the EOI message (SDM 11.8.5)
            v.apic.pic = self.board.pic              # LINT0 (ExtINT)
            v.board = self.board
            v.vmcs.write("EXCEPTION_BITMAP", config["vmx.exception_bitmap"])
            v.vmcs.update(self._vmx_controls(config))
            self.apic_bus.attach(v)
            self.vcpus.append(v)
        self.board.extint_taken = lambda: any(v.apic.accepts_extint() for v in self.vcpus)
        self._enter_multiboot(self.vcpus[0])

    # -- construction ------------------------------------------------------------------
    def _vmx_controls(self, config: VmConfig) -> dict[str, int]:
        """The VM-execution, exit and entry controls of what the model does (SDM 25.6-25.8):
        HLT and all I/O exit, EPT and APIC-access exits, EFER saved/loaded."""
        from hvdbg.arch.apic import XAPIC_BASE
        from hvdbg.vmx.controls import (PIN_BASED, PRIMARY_PROCESSOR_BASED, SECONDARY_PROCESSOR_BASED,
                                        VM_ENTRY, VM_EXIT)
        secondary = SECONDARY_PROCESSOR_BASED.mask("VIRTUALIZE_APIC_ACCESSES", "ENABLE_EPT")
        if config["vmx.unrestricted_guest"]:
            secondary |= SECONDARY_PROCESSOR_BASED.mask("UNRESTRICTED_GUEST")
        pin = PIN_BASED.mask("PREEMPTION_TIMER") if config["vmx.preemption_timer"] else 0
        return {
            "PIN_BASED_VM_EXEC_CONTROL": pin,
            "VMX_PREEMPTION_TIMER_VALUE": config["vmx.preemption_timer"],
            "CPU_BASED_VM_EXEC_CONTROL": PRIMARY_PROCESSOR_BASED.mask(
                "HLT_EXITING", "USE_IO_BITMAPS", "USE_MSR_BITMAPS", "ACTIVATE_SECONDARY_CONTROLS"),
            "IO_BITMAP_A": self.io_bitmaps.a,
            "IO_BITMAP_B": self.io_bitmaps.b,
            "MSR_BITMAP": self.msr_bitmap.page,
            "SECONDARY_VM_EXEC_CONTROL": secondary,
            "VM_EXIT_CONTROLS": VM_EXIT.mask("HOST_ADDRESS_SPACE_SIZE", "SAVE_EFER", "LOAD_EFER"),
            "VM_ENTRY_CONTROLS": VM_ENTRY.mask("LOAD_EFER"),
            "EPT_POINTER": self.memory.ept.eptp,
            "APIC_ACCESS_ADDR": XAPIC_BASE,
        }

    @staticmethod
    def _read(path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise GuestLoadError(f"{what} {path}: no such file") from None
        except OSError as e:
            raise GuestLoadError(f"{what} {path}: cannot read: {e.strerror}") from None

    def _echo(self, data: bytes) -> None:
        import sys
        sys.stdout.write(data.decode("utf-8", "replace"))
        sys.stdout.flush()

    def _load_kernel(self) -> multiboot.BootInfo:
        cfg = self.config
        modules = [(self._read(Path(p), "module"), Path(p).name) for p in cfg["modules"]]
        header = multiboot.find_header(self.kernel_image)
        magic = self.faults.entry_magic(header.version if header is not None else None)
        cmdline = cfg["cmdline"]
        if cfg["loader.kernel_name"]:   # QEMU -kernel / GRUB: "PATH ARGS"
            cmdline = f"{cfg['kernel']} {cmdline}".rstrip()
        return multiboot.load(self.kernel_image, self.memory, cfg["memory"], cmdline=cmdline,
                              modules=modules, magic=magic, reserved=[(ACPI_BASE, ACPI_END)],
                              name=self.kernel_path.name)

    def _enter_multiboot(self, bsp: Vcpu) -> None:
        """The machine state of Multiboot 0.6.96 3.2 / Multiboot2 3.3 (i386)."""
        boot = self.boot
        bsp.set_guest_state(rip=boot.entry, cr0=0x11, segments=flat_segments_32(), rflags=0x2,
                            gdtr=(0, 0), idtr=(0, 0), gprs={"rax": boot.eax, "rbx": boot.ebx})

    # -- lifecycle ---------------------------------------------------------------------
    @staticmethod
    def _disk_image(path: Path, write_back: bool) -> DiskImage:
        try:
            return DiskImage(path, write_back)
        except FileNotFoundError:
            raise GuestLoadError(f"disk {path}: no such file") from None
        except OSError as e:
            raise GuestLoadError(f"disk {path}: cannot open{' for writing' if write_back else ''}: {e.strerror}") from None

    def serial_send(self, data: bytes) -> None:
        """Bytes arriving on COM1's line (``hvdbg run --serial-input``, ``serial send``):
        queued in the UART, which raises IRQ 4 if the guest enabled it.  Under the
        execution turn, as every device interrupt (no engine runs meanwhile)."""
        with self.turns:
            self.uart.feed(data)

    def end(self, outcome: str, status: int | None = None, detail: str = "") -> None:
        with self._end_lock:
            if self.ending is None:
                self.ending = Ending(outcome, status, detail)
        self.ended_event.set()
        for v in self.vcpus:
            v.kick()

    @property
    def ended(self) -> bool:
        return self.ending is not None

    # -- queries -----------------------------------------------------------------------
    def virtual_time(self) -> int:
        """The VM's clock: the latest virtual time (guest instructions) of any vCPU."""
        return max((v.clock() for v in self.vcpus), default=0)

    def total_instructions(self) -> int:
        return sum(v.clock() - v.idle_ticks for v in self.vcpus)

    def symbolize(self, addr: int, vcpu: Vcpu | None = None) -> str:
        """``addr <symbol+off>`` in the kernel's symbols, or with ``vcpu`` running a guest
        hypervisor's guest (L2), in its guest's: the first multiboot module's ELF."""
        s = self.symbols_for(vcpu).symbolize(addr)
        return f"{addr:#x} <{s}>" if s else f"{addr:#x}"

    def symbols_for(self, vcpu: Vcpu | None) -> SymbolTable:
        """The symbols of the software ``vcpu`` runs: the kernel's, or while it runs the
        guest hypervisor's guest, the first module's (empty if it has none)."""
        if vcpu is None or vcpu.vmx is None or not vcpu.vmx.non_root:
            return self.symbols
        if self._guest_symbols is None:
            modules = self.config["modules"]
            try:
                image = self._read(Path(modules[0]), "module") if modules else None
            except Exception:  # noqa: BLE001 - no symbols rather than no report
                image = None
            self._guest_symbols = SymbolTable(image)
        return self._guest_symbols

    def disassemble(self, vcpu: Vcpu, addr: int, count: int = 1) -> list[str]:
        out = []
        for insn in vcpu.decode(addr, count):
            out.append(f"{insn.address:#x}: {insn.mnemonic} {insn.op_str}".rstrip())
        return out

    def vcpu_summary(self, v: Vcpu) -> dict:
        return {
            "id": v.index,
            "apic_id": v.apic_id,
            "cpuid_apic_id": v.cpuid.apic_id,
            "state": v.activity.label,
            "rip": v.engine.rip(),
            "symbol": self.symbols.symbolize(v.engine.rip()),
            "started_by_sipi": v.started_by_sipi,
            "instructions": v.instructions,
            "idle_ticks": v.idle_ticks,
            "spin_skipped": v.spin_skipped,
            "exits": v.exit_count,
            "interrupts_enabled": v.interrupts_enabled(),
            "pcpu": v.pcpu,
        }
