"""P4: a real gdb against hvdbg's stub and against QEMU's gdbstub, same guest kernel.

gdb 13 is driven through pygdbmi (MI3); the same commands go to
``hvdbg run examples/smp-4vcpu.toml --vcpus 1 --pcpus 1 --gdb PORT --gdb-wait`` and to
``qemu-system-x86_64 -kernel guests/build/smp.elf -smp 1 -gdb tcp:127.0.0.1:PORT -S``.
Every round starts both targets afresh and measures, QEMU and hvdbg alternately:

- ``step32``: ``stepi K`` from the multiboot entry ``_start`` (32-bit protected mode,
  paging off), K below the length of the entry code, so every step is 32-bit code;
- ``step64``: ``stepi N`` after ``break kmain`` / ``continue`` (64-bit, paging on;
  kmain prints over the UART, so the steps include IN/OUT instructions);
- ``dump``: ``dump binary memory`` of 1 MiB at the kernel's high-half base, at kmain;
- ``regs``: one register read after ``maintenance flush register-cache`` (a ``g`` each), at kmain;
- ``xbytes``: ``x/20000bx`` at the kernel's base (gdb sends one 1-byte ``m`` per byte);
- ``pwndbg``: with pwndbg 2024.08.29 (installed from ../shared/third_party as the tests do;
  the rows are left out without it), ``stepi`` + ``context`` three times from kmain (pwndbg
  drops its caches at every stop, so each context reads the state afresh).

Each time is taken inside gdb (its Python ``time.perf_counter`` around ``gdb.execute``),
so MI polling is not in it. gdb asks the same packets of both stubs (per step:
``vCont;s``, ``g``, a 64-byte ``m``); memory reads are split by each stub's PacketSize
(QEMU 4 KiB, hvdbg 128 KiB). "CPU/wall" is the *stub process's* CPU time over the wall
time of the command (/proc/PID/stat), CPU ratio the ratio per stub CPU-second.

    python bench/p4_gdb.py [--quick] [--repeats N] [--json FILE] [--steps N] [--dump-kib N]
"""

from __future__ import annotations

import functools
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import harness
from harness import ROOT, Case, Metric, Run

sys.path.insert(0, str(ROOT))
from fuzz.common import free_port_block as free_port  # noqa: E402  (PORT..PORT+n free)
from tests import debugger_tools  # noqa: E402  (pwndbg from ../shared/third_party, as the tests install it)
from tests.helpers import Gdb as MiGdb  # noqa: E402  (the MI3 driver of the tests)
from gdbstub.packet import decode_payload, frame  # noqa: E402  (the project's RSP framing)

GUEST = ROOT / "guests" / "build" / "smp.elf"
CONFIG = ROOT / "examples" / "smp-4vcpu.toml"
QEMU = shutil.which("qemu-system-x86_64")
GDB = shutil.which("gdb")

ENTRY = 0x100020                    # _start, the multiboot entry (physical = linear)
ENTRY_CODE_END = 0x200000           # 32-bit entry code lies below this; long mode runs high-half
KERNEL_BASE = 0xFFFFFF8000100000    # the kernel image in the high half (kmain's mapping)
KMAIN = 0                           # kmain's address, read from the ELF at start-up
STEPS_32 = 24                       # _start .. the far jump to long_mode_entry: 28 instructions
FULL_STEPS, QUICK_STEPS = 500, 20
FULL_DUMP_KIB, QUICK_DUMP_KIB = 1024, 64
FULL_TRIPS, QUICK_TRIPS = 200, 5
DEFAULT_REPEATS = 5
START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 300.0

FULL_READS, QUICK_READS = 200, 10
FULL_XBYTES, QUICK_XBYTES = 20000, 200
PWNDBG_STEPS = 3
REGISTER_READS_PER_SECOND = Metric("register reads per second (each a g round trip)", "reads/s",
                                   lambda r: r.instructions / r.seconds)
BYTES_PER_SECOND = Metric("bytes shown by x/Nbx per second", "bytes/s", lambda r: r.instructions / r.seconds)
PWNDBG_PER_SECOND = Metric("pwndbg stepi + context per second", "contexts/s", lambda r: r.instructions / r.seconds)
STEPS_PER_SECOND = Metric("gdb stepi per second", "stepi/s", lambda r: r.instructions / r.seconds)
MIB_PER_SECOND = Metric("guest memory dumped by gdb, MiB per second", "MiB/s",
                        lambda r: r.instructions / r.seconds / 2**20)

_TIMED = re.compile(r"P4_SECONDS ([0-9.]+)")


class BenchError(RuntimeError):
    pass


# -- processes ---------------------------------------------------------------------------
def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (read from /proc: probing with a
    connect would be a gdb client for QEMU)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def process_cpu_seconds(pid: int) -> float:
    """CPU time of all threads of a process, in ns resolution: the first field of
    /proc/PID/task/TID/schedstat (/proc/PID/stat counts clock ticks, too coarse here)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # a thread that just ended
    return total / 1e9


@dataclass
class StubProcess:
    """A debuggee serving gdb: hvdbg or QEMU, with a 1-CPU SMP test kernel."""

    name: str
    proc: subprocess.Popen
    port: int
    workdir: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def start_hvdbg(workdir: Path) -> StubProcess:
    port = free_port(2)
    proc = subprocess.Popen([sys.executable, "-m", "hvdbg.ui.cli", "run", str(CONFIG), "--vcpus", "1", "--pcpus", "1",
                             "--gdb", str(port), "--gdb-wait", "--json", "--compact"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()  # the stubs listen once hvdbg says so
    if "gdb stub for all" not in line:
        proc.kill()
        raise BenchError(f"hvdbg did not start its gdb stub: {line}{proc.stderr.read()}")
    return StubProcess("hvdbg", proc, port, workdir)


def _listening_process(name: str, argv: list[str], port: int, workdir: Path) -> StubProcess:
    """Start ``argv`` and wait until it listens on ``port``."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + START_TIMEOUT
    while not listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise BenchError(f"{name} did not listen on {port}: {proc.stderr.read().decode(errors='replace')}")
        time.sleep(0.02)
    return StubProcess(name, proc, port, workdir)


def start_qemu(workdir: Path) -> StubProcess:
    port = free_port(1)
    return _listening_process("qemu", [QEMU, "-kernel", str(GUEST), "-smp", "1", "-m", "128", "-display", "none",
                                       "-monitor", "none", "-no-reboot", "-serial", f"file:{workdir / 'qemu-serial.txt'}",
                                       "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                                       "-gdb", f"tcp:127.0.0.1:{port}", "-S"], port, workdir)


def start_floor(workdir: Path) -> StubProcess:
    """bench/rsp_floor.py: a Python process answering packets with no target behind it."""
    port = free_port(1)
    return _listening_process("python-floor", [sys.executable, str(ROOT / "bench" / "rsp_floor.py"), str(port)],
                              port, workdir)


# -- gdb ---------------------------------------------------------------------------------
class Gdb(MiGdb):
    """One gdb process over MI3 (tests/helpers.py's driver), polling fast, with a
    timing command."""

    def __init__(self) -> None:
        super().__init__(gdb=GDB, timeout=COMMAND_TIMEOUT, poll=0.01)

    def timed(self, command: str) -> float:
        """Seconds gdb spends in ``command``, measured inside gdb (no MI polling in it).
        For a resuming command MI answers ``^running`` first: the figure comes after it."""
        start = len(self.records)
        self.mi(f'-interpreter-exec console "python import time; _t = time.perf_counter(); '
                f"gdb.execute('{command}', to_string=True); "
                f"print('P4_SECONDS %.9f' % (time.perf_counter() - _t))\"")
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while True:
            for rec in self.records[start:]:
                if rec["type"] == "console" and (m := _TIMED.search(rec["payload"] or "")):
                    return float(m.group(1))
            self._read_more(deadline)


@dataclass
class Debuggee:
    """gdb attached to a freshly started stub; knows where the guest stands."""

    stub: StubProcess
    gdb: Gdb
    at_kmain: bool = False

    def close(self) -> None:
        try:
            self.gdb.close()
        finally:
            self.stub.stop()

    def measure(self, command: str, units: int, resumes: bool = False) -> Run:
        """Time ``command``; ``resumes``: it runs the guest, so it ends with a stop record."""
        cpu = process_cpu_seconds(self.stub.proc.pid)
        seconds = self.gdb.timed(command)
        cpu = process_cpu_seconds(self.stub.proc.pid) - cpu
        if resumes:
            self.gdb.wait_for_stop()
        return Run(units, 0, seconds, cpu_seconds=cpu)


class Target:
    """One side of the comparison: starts its stub, gets the guest where a case needs it."""

    def __init__(self, name: str, start, workdir: Path) -> None:
        self.name = name
        self._start = start
        self.workdir = workdir
        self.live: Debuggee | None = None

    def fresh(self, setup: tuple[str, ...] = ()) -> Debuggee:
        """A new stub and gdb (``setup``: commands before it loads the kernel, such as
        sourcing pwndbg), the guest at its multiboot entry, nothing executed yet."""
        self.close()
        stub = self._start(self.workdir)
        gdb = Gdb()
        try:
            for setting in ("confirm off", "pagination off", "width 0"):
                gdb.mi(f"-gdb-set {setting}")
            for command in setup:
                gdb.console(command)
            gdb.console(f"file {GUEST}")
            gdb.mi(f"-target-select remote 127.0.0.1:{stub.port}")
            gdb.wait_for_stop()
            if gdb.value("$pc") != ENTRY:  # QEMU -S: the reset vector, SeaBIOS loads the kernel
                gdb.console(f"hbreak *{ENTRY:#x}")
                gdb.console("continue")
                gdb.wait_for_stop()
                gdb.console("delete")
            if gdb.value("$pc") != ENTRY:
                raise BenchError(f"{self.name}: not at the multiboot entry")
        except BaseException:
            gdb.close()
            stub.stop()
            raise
        self.live = Debuggee(stub, gdb)
        return self.live

    def at_kmain(self) -> Debuggee:
        d = self.live if self.live is not None else self.fresh()
        if not d.at_kmain:
            d.gdb.console("break kmain")
            d.gdb.console("continue")
            stop = d.gdb.wait_for_stop()
            d.gdb.console("delete")
            if stop.get("frame", {}).get("func") != "kmain":
                raise BenchError(f"{self.name}: did not stop in kmain: {stop}")
            d.at_kmain = True
        return d

    def close(self) -> None:
        if self.live is not None:
            self.live.close()
            self.live = None


# -- the three cases ---------------------------------------------------------------------
def step32(t: Target, steps: int) -> Run:
    d = t.fresh()
    run = d.measure(f"stepi {steps}", steps, resumes=True)
    if d.gdb.value("$pc") >= ENTRY_CODE_END:
        raise BenchError(f"{t.name}: {steps} steps left the 32-bit entry code")
    return run


def step64(t: Target, steps: int) -> Run:
    d = t.at_kmain()
    before = d.gdb.value("$pc")
    run = d.measure(f"stepi {steps}", steps, resumes=True)
    if d.gdb.value("$pc") == before:
        raise BenchError(f"{t.name}: stepi did not move")
    return run


def dump(t: Target, size: int) -> Run:
    d = t.at_kmain()
    out = t.workdir / f"{t.name}-dump.bin"
    run = d.measure(f"dump binary memory {out} {KERNEL_BASE:#x} {KERNEL_BASE + size:#x}", size)
    if out.stat().st_size != size:
        raise BenchError(f"{t.name}: dumped {out.stat().st_size} bytes, not {size}")
    image = kernel_image_prefix()
    if out.read_bytes()[:len(image)] != image:
        raise BenchError(f"{t.name}: the dump does not start with the kernel image")
    return run


#: gdb Python that reads one register ``n`` times, each after dropping gdb's register cache
#: (each read is then a ``g`` round trip, as after a stop)
_REGISTER_READS = ('python p4_regs = lambda n: [(gdb.execute("maintenance flush register-cache"), '
                   'int(gdb.parse_and_eval("$rax"))) for _ in range(n)]')
#: ``n`` pwndbg steps, each followed by the context pwndbg shows at a stop (its caches are
#: dropped at every stop, so each context reads registers, stack, code and memory afresh)
_PWNDBG_STEPS = ('python p4_ctx = lambda n: [(gdb.execute("stepi", to_string=True), '
                 'gdb.execute("context", to_string=True)) for _ in range(n)]')


def register_reads(t: Target, reads: int) -> Run:
    d = t.at_kmain()
    d.gdb.console(_REGISTER_READS)
    return d.measure(f"python p4_regs({reads})", reads)


def examine_bytes(t: Target, count: int) -> Run:
    """``x/COUNTbx``: gdb reads each byte with its own ``m`` packet."""
    d = t.at_kmain()
    run = d.measure(f"x/{count}bx {KERNEL_BASE:#x}", count)
    first = d.gdb.console(f"x/1bx {KERNEL_BASE:#x}")
    if f"{kernel_image_prefix()[0]:#04x}" not in first:
        raise BenchError(f"{t.name}: x/bx does not show the kernel image: {first!r}")
    return run


def pwndbg_steps(t: Target, steps: int, gdbinit: Path) -> Run:
    """A fresh stub and gdb with pwndbg, stopped at kmain; ``steps`` stepi + context."""
    t.fresh(setup=(f"source {gdbinit}", "set disable-colors on"))
    try:
        d = t.at_kmain()
        d.gdb.console(_PWNDBG_STEPS)
        run = d.measure(f"python p4_ctx({steps})", steps)
        if "kmain" not in d.gdb.console("context"):
            raise BenchError(f"{t.name}: pwndbg's context does not show kmain")
        return run
    finally:
        t.close()


def elf_symbol(name: str) -> int:
    from elftools.elf.elffile import ELFFile

    with GUEST.open("rb") as f:
        for sym in ELFFile(f).get_section_by_name(".symtab").iter_symbols():
            if sym.name == name:
                return sym["st_value"]
    raise BenchError(f"no symbol {name} in {GUEST}")


@functools.cache
def kernel_image_prefix(length: int = 4096) -> bytes:
    """The first bytes of the kernel's PT_LOAD segment (what both dumps must start with)."""
    from elftools.elf.elffile import ELFFile

    with GUEST.open("rb") as f:
        seg = next(ELFFile(f).iter_segments(type="PT_LOAD"))
        f.seek(seg["p_offset"])
        return f.read(min(length, seg["p_filesz"]))


def cases(qemu: Target, hv: Target, steps: int, dump_bytes: int, reads: int, xbytes: int,
          pwndbg: Path | None) -> dict[str, list[Case]]:
    """Per table, QEMU then hvdbg; ``measure`` runs them round by round, so each round
    starts both targets afresh (step32) and then steps and dumps on both."""
    def pair(kind: str, fn, units: int, target: float | None) -> list[Case]:
        return [Case(f"qemu-{kind}", "QEMU gdbstub (TCG), 1 CPU", lambda: fn(qemu, units)),
                Case(f"hv-{kind}", "hvdbg stub, 1 vCPU", lambda: fn(hv, units), ("qemu-" + kind,), target=target)]
    return {
        "step32": pair("step32", step32, STEPS_32, 1.0),
        "step64": pair("step64", step64, steps, 1.0),
        "dump": pair("dump", dump, dump_bytes, 2.0),
        "regs": pair("regs", register_reads, reads, 1.0),
        "xbytes": pair("xbytes", examine_bytes, xbytes, 1.0),
        "pwndbg": [] if pwndbg is None else pair(
            "pwndbg", lambda t, n: pwndbg_steps(t, n, pwndbg), PWNDBG_STEPS, 0.5),
    }


# -- per-packet round trips, no gdb -------------------------------------------------------
class RspClient:
    """A minimal RSP client (the project's own framing), no-ack mode: what a stepi costs
    each stub, packet by packet, without gdb's own time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=COMMAND_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        self._ack = True
        self.request(b"qSupported:swbreak+;hwbreak+;vContSupported+")
        self.request(b"QStartNoAckMode")
        self._ack = False

    def close(self) -> None:
        self.sock.close()

    def request(self, payload: bytes) -> bytes:
        self.sock.sendall(frame(payload))
        while True:
            start = self._buf.find(b"$")
            end = self._buf.find(b"#", start + 1) if start >= 0 else -1
            if end >= 0 and len(self._buf) >= end + 3:
                body, self._buf = self._buf[start + 1:end], self._buf[end + 3:]
                if self._ack:
                    self.sock.sendall(b"+")
                return decode_payload(body)
            data = self.sock.recv(1 << 20)
            if not data:
                raise BenchError("the stub closed the connection")
            self._buf += data


#: (key, request, what gdb uses it for).  A stepi in gdb 13 is vCont;s + g + a 64-byte m
#: (the stop reply names the thread; gdb then reads the registers and the stack).
PACKETS = (
    ("g", b"g", "read all registers (one per stepi)"),
    ("m64", b"m%x,40" % (KERNEL_BASE + 0xCFC0), "read 64 bytes (one per stepi)"),
    ("vcont-s", b"vCont;s:1", "single step + stop reply (one per stepi)"),
    ("m2k", b"m%x,800" % KERNEL_BASE, "read 2 KiB (QEMU's largest m reply)"),
    ("qC", b"qC", "current thread (no target work: the round trip itself)"),
)


class RawTarget:
    """A stub with a raw client, the guest stopped at kmain."""

    def __init__(self, name: str, start, workdir: Path) -> None:
        self.name = name
        self._start = start
        self.workdir = workdir
        self.live: tuple[StubProcess, RspClient] | None = None

    def at_kmain(self) -> tuple[StubProcess, RspClient]:
        if self.live is None:
            stub = self._start(self.workdir)
            try:
                client = RspClient(stub.port)
                kmain = b"%x" % KMAIN
                client.request(b"Z0," + kmain + b",1")
                reply = client.request(b"vCont;c")
                client.request(b"z0," + kmain + b",1")
                if not reply.startswith(b"T05"):
                    raise BenchError(f"{self.name}: no breakpoint stop at kmain: {reply!r}")
            except BaseException:
                stub.stop()
                raise
            self.live = (stub, client)
        return self.live

    def close(self) -> None:
        if self.live is not None:
            self.live[1].close()
            self.live[0].stop()
            self.live = None


def round_trips(t: RawTarget, request: bytes, count: int, fresh: bool) -> Run:
    if fresh:
        t.close()
    stub, client = t.at_kmain()
    cpu = process_cpu_seconds(stub.proc.pid)
    with harness.Timer() as timer:
        for _ in range(count):
            reply = client.request(request)
    if reply.startswith(b"E") and len(reply) == 3:
        raise BenchError(f"{t.name}: {request!r} -> {reply!r}")
    return Run(count, 0, timer.seconds, cpu_seconds=process_cpu_seconds(stub.proc.pid) - cpu)


def packet_cases(qemu: RawTarget, hv: RawTarget, floor: RawTarget, count: int) -> list[Case]:
    """Each round starts both stubs afresh (first packet), then alternates QEMU / hvdbg;
    ``qC`` also goes to the Python floor (bench/rsp_floor.py)."""
    out = []
    for i, (key, request, what) in enumerate(PACKETS):
        def run(t: RawTarget, request=request, fresh=(i == 0)) -> Run:
            return round_trips(t, request, count, fresh)
        shown = request.decode()[:24]
        out += [Case(f"qemu-{key}", f"QEMU, `{shown}`: {what}", lambda run=run: run(qemu)),
                Case(f"hv-{key}", f"hvdbg, `{shown}`", lambda run=run: run(hv), (f"qemu-{key}",),
                     note=per_request_us)]
    out.append(Case("floor-qC", "a Python process's floor, `qC` (bench/rsp_floor.py: recv, sendall, no target)",
                    lambda: round_trips(floor, b"qC", count, True), ("qemu-qC",), note=per_request_us))
    return out


def per_request_us(case: list[Run], base: list[Run] | None) -> str:
    mine = harness.median([r.seconds / r.instructions for r in case]) * 1e6
    theirs = harness.median([r.seconds / r.instructions for r in base]) * 1e6 if base else float("nan")
    cpu = harness.median([r.cpu_seconds / r.instructions for r in case]) * 1e6
    return f"{mine:.0f} us per round trip (QEMU {theirs:.0f} us); stub CPU {cpu:.0f} us"


ROUND_TRIPS_PER_SECOND = Metric("request/reply round trips per second (raw RSP client, no gdb)", "trips/s",
                                lambda r: r.instructions / r.seconds)


def add_arguments(p) -> None:
    p.add_argument("--steps", type=int, default=None, help=f"stepi count at kmain (default {FULL_STEPS})")
    p.add_argument("--dump-kib", type=int, default=None, help=f"KiB to dump (default {FULL_DUMP_KIB})")
    p.add_argument("--trips", type=int, default=None,
                   help=f"round trips per packet kind in the raw RSP table (default {FULL_TRIPS})")


def main() -> None:
    opts = harness.parse_args(__doc__.splitlines()[0], DEFAULT_REPEATS, add_arguments)
    if GDB is None:
        raise SystemExit("p4_gdb: gdb is not installed")
    if QEMU is None:
        print("p4_gdb: qemu-system-x86_64 is not installed (scripts/setup.sh installs it): nothing to compare")
        harness.finish(opts, [])
        return
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)
    global KMAIN
    KMAIN = elf_symbol("kmain")
    if elf_symbol("_start") != KERNEL_BASE + ENTRY - 0x100000:
        raise SystemExit(f"p4_gdb: _start is not at {ENTRY:#x} in {GUEST}: update the constants")
    steps = opts.args.steps or (QUICK_STEPS if opts.quick else FULL_STEPS)
    dump_kib = opts.args.dump_kib or (QUICK_DUMP_KIB if opts.quick else FULL_DUMP_KIB)
    qemu_version = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    gdb_version = subprocess.run([GDB, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    harness.print_header("P4: gdb against hvdbg's stub and QEMU's gdbstub", opts, {
        "guest": f"guests/build/smp.elf, 1 CPU; hvdbg: {CONFIG.relative_to(ROOT)} --vcpus 1 --pcpus 1",
        "qemu": qemu_version, "gdb": gdb_version,
        "work": f"stepi {STEPS_32} from _start (32-bit); stepi {steps} from kmain (64-bit); "
                f"dump binary memory of {dump_kib} KiB at {KERNEL_BASE:#x}",
    })
    qemu, hv = Target("qemu", start_qemu, opts.workdir), Target("hvdbg", start_hvdbg, opts.workdir)
    try:
        pwndbg: Path | None = debugger_tools.install()["pwndbg"]
    except debugger_tools.ToolsMissing as e:
        print(f"p4_gdb: no pwndbg rows: {e}")
        pwndbg = None
    table = cases(qemu, hv, steps, dump_kib * 1024, QUICK_READS if opts.quick else FULL_READS,
                  QUICK_XBYTES if opts.quick else FULL_XBYTES, pwndbg)
    ordered = [c for key in ("step32", "step64", "dump", "regs", "xbytes", "pwndbg") for c in table[key]]
    try:
        runs = harness.measure(ordered, opts.repeats, log=harness.log)
    finally:
        qemu.close()
        hv.close()
    collected: list[dict] = []
    harness.emit(f"P4 stepi in 32-bit entry code (stepi {STEPS_32} from _start)", STEPS_PER_SECOND,
                 table["step32"], runs, collected)
    harness.emit(f"P4 stepi in 64-bit code (stepi {steps} from kmain)", STEPS_PER_SECOND, table["step64"], runs,
                 collected)
    harness.emit(f"P4 dump binary memory, {dump_kib} KiB", MIB_PER_SECOND, table["dump"], runs, collected)
    harness.emit("P4 register reads at kmain (maintenance flush register-cache; p $rax)",
                 REGISTER_READS_PER_SECOND, table["regs"], runs, collected)
    harness.emit(f"P4 x/Nbx at {KERNEL_BASE:#x} (one m packet per byte)", BYTES_PER_SECOND, table["xbytes"],
                 runs, collected)
    if table["pwndbg"]:
        harness.emit(f"P4 pwndbg: {PWNDBG_STEPS} stepi, each with the context of its stop (pwndbg 2024.08.29)",
                     PWNDBG_PER_SECOND, table["pwndbg"], runs, collected)

    trips = opts.args.trips or (QUICK_TRIPS if opts.quick else FULL_TRIPS)
    raw_qemu, raw_hv = RawTarget("qemu", start_qemu, opts.workdir), RawTarget("hvdbg", start_hvdbg, opts.workdir)
    floor = RawTarget("python-floor", start_floor, opts.workdir)
    raw_cases = packet_cases(raw_qemu, raw_hv, floor, trips)
    try:
        raw_runs = harness.measure(raw_cases, opts.repeats, log=harness.log)
    finally:
        raw_qemu.close()
        raw_hv.close()
        floor.close()
    harness.emit(f"P4 per-packet round trips at kmain ({trips} of each, raw RSP client)", ROUND_TRIPS_PER_SECOND,
                 raw_cases, raw_runs, collected)
    harness.finish(opts, collected)


if __name__ == "__main__":
    main()
