"""What ``hvdbg run`` and ``hvdbg shell`` share: the configuration from the command
line's overrides, the GDB stubs (one for every vCPU, one per vCPU) and their banner."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from hvdbg.api import make_config
from hvdbg.config import VmConfig, config_for_kernel
from hvdbg.debug.session import DebugSession
from hvdbg.errors import HvdbgError
from hvdbg.hv.machine import Machine

MAX_TCP_PORT = 65535
#: The process name while gdb stubs listen: gdb-pt-dump (pwndbg's ``vmmap`` on a kernel)
#: looks for the emulator with ``pgrep qemu-system`` and then reads guest memory from
#: /proc/PID/mem at the host address ``monitor gpa2hva`` gives (docs/gdb.md).
PROCESS_NAME = "qemu-system-hv"

# command-line option -> config schema key
_OVERRIDES = (("vcpus", "vcpus"), ("pcpus", "pcpus"), ("memory", "memory"), ("sched", "sched"),
              ("cmdline", "cmdline"), ("deterministic", "deterministic"), ("spin_skip", "spin_skip"),
              ("budget", "budget.instructions"), ("seconds", "budget.seconds"), ("cpu", "cpu"),
              ("kernel_name", "loader.kernel_name"), ("disk", "disk"))


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides given on the command line (``__`` for a section's dot, as
    :func:`hvdbg.api.make_config` takes them); a path relative to the working directory."""
    out = {key.replace(".", "__"): getattr(args, option) for option, key in _OVERRIDES
           if getattr(args, option, None) is not None}
    if out.get("disk"):
        out["disk"] = str(Path(out["disk"]).resolve())
    return out


def config_source(args: argparse.Namespace) -> str | VmConfig:
    """What ``args.config`` names: a TOML file, or a kernel to run the way ``qemu-system-x86_64
    -kernel`` runs it (``hvdbg run KERNEL --vcpus 4 --module FILE``; anything but ``.toml``)."""
    modules = [str(Path(m).resolve()) for m in getattr(args, "module", None) or []]
    if args.config.endswith(".toml"):
        if modules:
            raise HvdbgError(f"{args.config}: --module is for a kernel; a TOML lists its 'modules'")
        return args.config
    return config_for_kernel(args.config, modules=modules)


def config_from_args(args: argparse.Namespace, **extra: Any) -> VmConfig:
    """``args.config`` with the command line's overrides, then ``extra``."""
    return make_config(config_source(args), **overrides_from_args(args), **extra)


def run_to_end(args: argparse.Namespace, echo_serial: bool) -> tuple[dict[str, Any], float]:
    """``hvdbg run``: the VM of ``args`` run to its end (under the GDB stubs with
    ``--gdb``); the result object of :func:`hvdbg.api.diagnosis.result` and the wall time."""
    from hvdbg import api
    from hvdbg.api import diagnosis

    echo = {"output__echo_serial": True} if echo_serial else {}
    vm = Machine(config_from_args(args, **echo))
    serial_input(vm, getattr(args, "serial_input", None))
    if args.gdb is None:
        run = api.run_machine(vm, stop_on_interrupt=True)
        return run.result, run.wall_seconds
    start = time.monotonic()
    run_with_gdb(vm, args.gdb_host, args.gdb, args.gdb_wait, args.gdb_arch)
    wall = time.monotonic() - start
    return diagnosis.result(vm, wall, None), wall


def serial_input(vm: Machine, source: str | None) -> None:
    """``--serial-input``: a file's bytes arrive on COM1 before the guest starts; ``-``
    feeds standard input as it comes, and until its end the VM waits for input rather than
    end in a hang when every vCPU is halted (a kernel at a prompt)."""
    if source is None:
        return
    if source != "-":
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            raise HvdbgError(f"--serial-input {source}: cannot read: {e.strerror}") from None
        vm.serial_send(data)
        return
    fd = sys.stdin.fileno()

    def feed() -> None:
        try:
            while not vm.ended:
                data = os.read(fd, 4096)
                if not data:
                    break
                vm.serial_send(data)
        except OSError:
            pass
        finally:
            vm.input_open = False

    vm.input_open = True
    threading.Thread(target=feed, name="serial-input", daemon=True).start()


def start_gdb_servers(session: DebugSession, host: str, port: int,
                      monitor: Callable | None = None, arch: str = "x86-64") -> list:
    """One stub with every vCPU as a thread on ``port``, one per vCPU i on port+1+i,
    announcing the register layout ``arch`` (a key of ``gdbstub.arch.X86_LAYOUTS``)."""
    from gdbstub import GdbServer
    from gdbstub.arch import X86_LAYOUTS
    from hvdbg.debug.gdb_target import VmTarget

    layout = X86_LAYOUTS[arch]

    last = port + len(session.vm.vcpus)
    if not 1 <= port or last > MAX_TCP_PORT:
        raise HvdbgError(f"--gdb {port}: the stubs need TCP ports {port}..{last} (one for all vCPUs, one per "
                         f"vCPU); ports are 1..{MAX_TCP_PORT}")
    servers = [GdbServer(VmTarget(session, None, monitor, layout), host=host, port=port)]
    for v in session.vm.vcpus:
        servers.append(GdbServer(VmTarget(session, frozenset({v.index}), monitor, layout), host=host,
                                 port=port + 1 + v.index))
    try:
        for s in servers:
            s.start()
    except OSError as e:
        for s in servers:
            s.stop()
        raise HvdbgError(f"cannot listen on {host}:{port}..{port + len(servers) - 1}: {e.strerror}") from None
    name_process(PROCESS_NAME)
    return servers


def name_process(name: str) -> None:
    """Set the process name ``ps`` and ``pgrep`` see (Linux: the main thread's comm, at
    most 15 bytes); elsewhere, or if /proc refuses, nothing happens."""
    import threading

    try:
        with open(f"/proc/self/task/{threading.main_thread().native_id}/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


def gdb_banner(vm: Machine, host: str, port: int, held: bool = False) -> None:
    """Say on stderr where the stubs listen."""
    n = len(vm.vcpus)
    print(f"hvdbg: gdb stub for all {n} vCPUs on {host}:{port}; per-vCPU stubs on ports "
          f"{port + 1}..{port + n}" + (" (guest held until gdb continues)" if held else ""),
          file=sys.stderr, flush=True)


def run_with_gdb(vm: Machine, host: str, port: int, wait: bool, arch: str = "x86-64") -> None:
    """Run the VM to its end under the GDB stubs (``wait``: held until gdb continues),
    with the command registry as gdb's ``monitor``."""
    from hvdbg.ui.commands import make_monitor

    session = DebugSession(vm, start_paused=wait)
    servers = start_gdb_servers(session, host, port, make_monitor(session), arch)
    gdb_banner(vm, host, port, held=wait)
    session.start()
    try:
        while session.running:
            session.join(0.2)
    except KeyboardInterrupt:
        vm.end("stopped", detail="interrupted by the user")
        session.shutdown()
    finally:
        # let a debugger that just killed or detached read its last reply; after any
        # other end (EPT violation, triple fault, budget) a connected debugger keeps its
        # stop to inspect until it kills or detaches (docs/gdb.md)
        outcome = str(vm.ending.outcome) if vm.ending is not None else ""
        deadline = time.monotonic() + (2.0 if outcome in ("exited", "killed", "stopped") else float("inf"))
        try:
            while any(s.client_connected for s in servers) and time.monotonic() < deadline:
                time.sleep(0.05)
        except KeyboardInterrupt:
            pass
        for s in servers:
            s.stop()
