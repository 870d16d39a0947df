"""A tiny fake multi-CPU machine implementing the gdbstub Target interface.

Each "CPU" is a thread with the full x86-64 register file as a dict. Memory is one
bytearray, physical address 0 mapped at virtual ``VIRT_BASE``. The instruction set:

* ``0xAA`` store: write ``rax`` (8 bytes) to ``[rbx]``, then ``rax += 1``
* ``0xAB`` load: ``rcx = [rbx]`` (8 bytes)
* ``0xEB rel8`` jump: ``rip += 2 + rel8``
* ``0xF4`` halt: the machine exits with status ``rax & 0xff``
* anything else: one-byte no-op

``resume`` runs the resumed CPUs round-robin, one instruction each, on a background
thread until a breakpoint (before executing), a watched access (after executing),
a finished step, a fault or an interrupt stops everything (all-stop).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

from gdbstub.arch.x86_64 import X86_64
from gdbstub.target import (
    ConsoleOutput,
    HwBreakpointOps,
    KillOps,
    MemoryAccessError,
    MonitorOps,
    PhysicalMemoryOps,
    ResumeAction,
    ResumeKind,
    SingleStepFlagsOps,
    SstepFlags,
    StopEvent,
    SwBreakpointOps,
    Target,
    TargetError,
    ThreadExtraInfoOps,
    ThreadInfo,
    WatchKind,
    WatchpointOps,
)

VIRT_BASE = 0x400000
MEMORY_SIZE = 0x20000
CODE_STRIDE = 0x1000
DATA_BASE = VIRT_BASE + 0x8000
STACK_TOP = VIRT_BASE + 0x10000
SIGSEGV = 11
HW_DEBUG_SLOTS = 4  # like DR0-DR3

OP_STORE = 0xAA
OP_LOAD = 0xAB
OP_JMP = 0xEB
OP_NOP = 0x90
OP_HALT = 0xF4


class MachineExit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status

#: Program of every CPU, relative to its code base: nops, a store at +0x20, a load
#: at +0x28, and a jump back to the start at +0x40 (an endless loop).
STORE_OFFSET = 0x20
LOAD_OFFSET = 0x28
JUMP_OFFSET = 0x40


def code_base(index: int) -> int:
    return VIRT_BASE + CODE_STRIDE * (index + 1)


def data_address(index: int) -> int:
    return DATA_BASE + 0x100 * index


def _initial_registers(index: int) -> dict[str, int | bytes]:
    regs: dict[str, int | bytes] = {}
    for reg in X86_64.registers:
        regs[reg.name] = bytes(reg.size) if reg.kind == "bytes" else 0
    regs.update(
        rax=0x1000 * (index + 1),
        rbx=data_address(index),
        rsp=STACK_TOP - 0x1000 * index,
        rbp=STACK_TOP - 0x1000 * index,
        rip=code_base(index),
        eflags=0x202,
        cs=0x10, ss=0x18, ds=0x18, es=0x18,
        cr0=0x80000011, cr3=0x1000, cr4=0x20, efer=0x500,
        fctrl=0x37F, mxcsr=0x1F80,
    )
    regs["xmm0"] = bytes(range(16 * index, 16 * index + 16))
    return regs


@dataclass
class FakeCpu:
    index: int
    tid: int
    regs: dict[str, int | bytes] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"CPU#{self.index}"


@dataclass(frozen=True)
class Watch:
    address: int
    length: int
    kind: WatchKind

    def hits(self, address: int, size: int, is_write: bool) -> bool:
        overlaps = address < self.address + self.length and self.address < address + size
        if not overlaps:
            return False
        if self.kind is WatchKind.WRITE:
            return is_write
        if self.kind is WatchKind.READ:
            return not is_write
        return True


class FakeMachine(
    Target,
    SwBreakpointOps,
    HwBreakpointOps,
    WatchpointOps,
    MonitorOps,
    ThreadExtraInfoOps,
    SingleStepFlagsOps,
    PhysicalMemoryOps,
    KillOps,
):
    def __init__(self, tids: tuple[int, ...] = (1, 2, 3)) -> None:
        self.cpus = [FakeCpu(i, tid, _initial_registers(i)) for i, tid in enumerate(tids)]
        self.memory = bytearray(MEMORY_SIZE)
        for cpu in self.cpus:
            self._load_program(code_base(cpu.index))
        self.sw_breakpoints: set[int] = set()
        self.hw_breakpoints: set[int] = set()
        self.watches: set[Watch] = set()
        self.sstep_flags = SstepFlags.ENABLE | SstepFlags.NOIRQ | SstepFlags.NOTIMER
        self.kills = 0
        self.largest_read = 0
        self.resumes: list[dict[int, ResumeAction]] = []
        self._lock = threading.RLock()
        self._stops: queue.Queue[StopEvent] = queue.Queue()
        self._interrupt = threading.Event()
        self._runner: threading.Thread | None = None
        self._last_tid = self.cpus[0].tid

    def _load_program(self, base: int) -> None:
        start = base - VIRT_BASE
        self.memory[start : start + JUMP_OFFSET] = bytes([OP_NOP]) * JUMP_OFFSET
        self.memory[start + STORE_OFFSET] = OP_STORE
        self.memory[start + LOAD_OFFSET] = OP_LOAD
        self.memory[start + JUMP_OFFSET] = OP_JMP
        self.memory[start + JUMP_OFFSET + 1] = (-(JUMP_OFFSET + 2)) & 0xFF

    # ------------------------------------------------------------------ helpers

    def cpu(self, tid: int) -> FakeCpu:
        for cpu in self.cpus:
            if cpu.tid == tid:
                return cpu
        raise TargetError(f"no thread {tid}")

    @property
    def running(self) -> bool:
        return self._runner is not None and self._runner.is_alive()

    def _physical(self, address: int, length: int) -> slice:
        offset = address - VIRT_BASE
        if offset < 0 or offset + length > MEMORY_SIZE:
            raise MemoryAccessError(f"unmapped {address:#x}+{length:#x}")
        return slice(offset, offset + length)

    # ------------------------------------------------------------------ Target

    @property
    def arch(self):
        return X86_64

    def threads(self):
        return [ThreadInfo(cpu.tid, cpu.name) for cpu in self.cpus]

    def read_registers(self, tid):
        with self._lock:
            return dict(self.cpu(tid).regs)

    def write_registers(self, tid, values):
        with self._lock:
            self.cpu(tid).regs.update(values)

    def read_memory(self, tid, address, length):
        self.cpu(tid)
        with self._lock:
            self.largest_read = max(self.largest_read, length)
            return bytes(self.memory[self._physical(address, length)])

    def write_memory(self, tid, address, data):
        self.cpu(tid)
        with self._lock:
            self.memory[self._physical(address, len(data))] = data

    def resume(self, actions):
        if self.running:
            raise TargetError("already running")
        self.resumes.append(dict(actions))
        self._interrupt.clear()
        self._runner = threading.Thread(target=self._run, args=(dict(actions),), daemon=True)
        self._runner.start()

    def wait_for_stop(self, timeout):
        try:
            event = self._stops.get(timeout=timeout)
        except queue.Empty:
            return None
        if self._runner is not None:
            self._runner.join()
        return event

    def interrupt(self):
        self._interrupt.set()

    def shutdown(self) -> None:
        """Stop the background runner, if any (test teardown)."""
        if self.running:
            self.interrupt()
            self.wait_for_stop(5.0)

    def attach(self):
        if self.running:
            self.interrupt()
            event = self.wait_for_stop(5.0)
            assert event is not None
            return event
        # The runner stopped on its own while nobody waited (a fault after a detach
        # resumed it): that stop was never reported and is not the new debugger's.
        while not self._stops.empty():
            self._stops.get_nowait()
        return StopEvent.signalled(self._last_tid, 5)

    # ------------------------------------------------------------------ execution

    def _run(self, actions: dict[int, ResumeAction]) -> None:
        order = [cpu for cpu in self.cpus if cpu.tid in actions]
        steppers = {tid for tid, a in actions.items() if a.kind is ResumeKind.STEP}
        event = None
        cycles = 0
        while event is None:
            for cpu in order:
                if self._interrupt.is_set():
                    event = StopEvent.interrupted(order[0].tid)
                    break
                event = self._step_cpu(cpu, stepping=cpu.tid in steppers)
                if event is not None:
                    break
            cycles += 1
            if cycles % 256 == 0:
                self._interrupt.wait(0.0005)  # let other threads breathe
        self._last_tid = event.tid or self._last_tid
        self._stops.put(event)

    def _step_cpu(self, cpu: FakeCpu, stepping: bool) -> StopEvent | None:
        with self._lock:
            rip = cpu.regs["rip"]
            if not stepping and rip in self.sw_breakpoints:
                return StopEvent.sw_breakpoint(cpu.tid)
            if not stepping and rip in self.hw_breakpoints:
                return StopEvent.hw_breakpoint(cpu.tid)
            try:
                access = self._execute(cpu)
            except MemoryAccessError:
                return StopEvent.signalled(cpu.tid, SIGSEGV)
            except MachineExit as exit_:
                return StopEvent.exited(exit_.status)
            if access is not None:
                address, size, is_write = access
                for watch in self.watches:
                    if watch.hits(address, size, is_write):
                        return StopEvent.watchpoint(cpu.tid, watch.kind, address)
        return StopEvent.step_done(cpu.tid) if stepping else None

    def _execute(self, cpu: FakeCpu) -> tuple[int, int, bool] | None:
        regs = cpu.regs
        rip = regs["rip"]
        opcode = self.memory[self._physical(rip, 1)][0]
        if opcode == OP_STORE:
            address = regs["rbx"]
            self.memory[self._physical(address, 8)] = regs["rax"].to_bytes(8, "little")
            regs["rax"] = (regs["rax"] + 1) & (2**64 - 1)
            regs["rip"] = rip + 1
            return address, 8, True
        if opcode == OP_LOAD:
            address = regs["rbx"]
            regs["rcx"] = int.from_bytes(self.memory[self._physical(address, 8)], "little")
            regs["rip"] = rip + 1
            return address, 8, False
        if opcode == OP_HALT:
            raise MachineExit(regs["rax"] & 0xFF)
        if opcode == OP_JMP:
            rel = self.memory[self._physical(rip + 1, 1)][0]
            regs["rip"] = rip + 2 + (rel - 256 if rel >= 128 else rel)
            return None
        regs["rip"] = rip + 1
        return None

    # ------------------------------------------------------------------ capabilities

    def add_sw_breakpoint(self, address, kind):
        self.sw_breakpoints.add(address)
        return True

    def remove_sw_breakpoint(self, address, kind):
        self.sw_breakpoints.discard(address)
        return True

    def _hw_slots_used(self) -> int:
        return len(self.hw_breakpoints) + len(self.watches)

    def add_hw_breakpoint(self, address, kind):
        if self._hw_slots_used() >= HW_DEBUG_SLOTS:
            return False
        self.hw_breakpoints.add(address)
        return True

    def remove_hw_breakpoint(self, address, kind):
        self.hw_breakpoints.discard(address)
        return True

    def add_watchpoint(self, address, length, kind):
        if self._hw_slots_used() >= HW_DEBUG_SLOTS:
            return False
        self.watches.add(Watch(address, length, kind))
        return True

    def remove_watchpoint(self, address, length, kind):
        self.watches.discard(Watch(address, length, kind))
        return True

    def monitor_command(self, command: str, out: ConsoleOutput) -> None:
        words = command.split()
        if words[:1] == ["cpus"]:
            for cpu in self.cpus:
                out.write(f"{cpu.name} tid={cpu.tid} rip={cpu.regs['rip']:#x}\n")
        elif words[:1] == ["echo"]:
            out.write(command.partition(" ")[2] + "\n")
        else:
            raise TargetError(f"unknown monitor command {command!r}")

    def thread_extra_info(self, tid):
        return f"vCPU {self.cpu(tid).index}"

    def single_step_flags(self):
        return self.sstep_flags

    def set_single_step_flags(self, flags):
        self.sstep_flags = flags

    def read_physical_memory(self, address, length):
        return self.read_memory(self.cpus[0].tid, address + VIRT_BASE, length)

    def write_physical_memory(self, address, data):
        self.write_memory(self.cpus[0].tid, address + VIRT_BASE, data)

    def kill(self):
        self.kills += 1
