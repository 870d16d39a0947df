"""The ``hvdbg`` command.  Every user error is one line on stderr and exit status 2;
never a Python traceback."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from gdbstub.arch import X86_LAYOUTS
from hvdbg import __version__
from hvdbg.errors import HvdbgError


def _add_gdb_options(p: argparse.ArgumentParser) -> None:
    """Where the stubs of ``--gdb`` listen and which register layout they announce."""
    p.add_argument("--gdb-host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--gdb-arch", choices=tuple(X86_LAYOUTS), default="x86-64",
                   help="the stubs' register layout: x86-64 (default), or 32-bit announced as i386 or "
                        "i8086 (gdb then disassembles 16-bit real-mode code itself)")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vcpus", type=int, help="number of vCPUs (overrides the config)")
    p.add_argument("--pcpus", type=int, help="number of pCPUs (host threads)")
    p.add_argument("--memory", help="guest RAM, e.g. 16M")
    p.add_argument("--cmdline", help="kernel command line")
    p.add_argument("--sched", help="scheduling policy: pinned, fifo, rr, cfs, smp")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="one host thread, instruction-counted slices: same config, same trace (the default; "
                        "--no-deterministic runs vCPUs on host threads, in host-timed order)")
    p.add_argument("--spin-skip", action="store_true", default=None, dest="spin_skip",
                   help="loops without progress skip the rest of their slice (and, pinned, yield the host core)")
    p.add_argument("--cpu", help="CPU model and flags in QEMU's -cpu spelling, e.g. max,-pku (docs/config.md)")
    p.add_argument("--module", action="append", metavar="FILE",
                   help="with a KERNEL: a multiboot module (repeatable, in order), as QEMU's -initrd")
    p.add_argument("--kernel-name", action=argparse.BooleanOptionalAction, default=None, dest="kernel_name",
                   help="put the kernel's path first in its command line, as QEMU and GRUB do "
                        "(default: on for a KERNEL, off for a TOML)")
    p.add_argument("--disk", help="disk image for the ATA disk (copy-on-write: the file is never changed)")
    p.add_argument("--budget", type=int, help="instruction budget")
    p.add_argument("--seconds", type=int, help="time budget in seconds")


def cmd_run(args: argparse.Namespace) -> int:
    from hvdbg.ui import app
    from hvdbg.ui.render.report import format_run_report

    res, wall = app.run_to_end(args, echo_serial=not args.json and not args.quiet)
    if args.json:
        print(json.dumps(res, indent=None if args.compact else 2))
    else:
        if args.quiet:
            sys.stdout.write(res["serial"])
        print(format_run_report(res, wall))
    return 0 if res["outcome"] == "exited" and not res["exit_status"] else 1


def cmd_check_determinism(args: argparse.Namespace) -> int:
    from hvdbg.api import determinism
    from hvdbg.ui import app

    overrides = {k: v for k, v in app.overrides_from_args(args).items() if k != "deterministic"}
    report = determinism.check(app.config_source(args), **overrides)
    print("\n".join(report.lines()))
    return 0 if report.repeatable and not report.differences() else 1


def cmd_conformance(args: argparse.Namespace) -> int:
    from hvdbg.api import conformance

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if not (args.source or args.tarball):
        raise conformance.ConformanceError("conformance kut: give a kvm-unit-tests tree or --from TARBALL")
    tree = conformance.prepare(args.source or args.tarball, args.build_dir, progress)
    report = conformance.run_suite(tree, cases=args.case or None, qemu=not args.no_qemu,
                                   overcommit=args.overcommit, max_timeout=args.timeout, progress=progress)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.markdown())
    return 0


def cmd_shell(args: argparse.Namespace) -> int:
    from hvdbg.ui.shell import run_shell

    return run_shell(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvdbg", description="Debug x86 VMX hypervisors and their SMP guests.")
    parser.add_argument("--version", action="version", version=f"hvdbg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a VM to its end and report the outcome")
    run.add_argument("config", metavar="CONFIG|KERNEL",
                     help="VM configuration (TOML), or a multiboot kernel to run with the defaults and the options")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument("--compact", action="store_true", help="with --json: on one line")
    run.add_argument("--quiet", action="store_true", help="print the serial output only at the end")
    run.add_argument("--gdb", type=int, metavar="PORT",
                     help="serve GDB: all vCPUs as threads on PORT, vCPU i alone on PORT+1+i")
    run.add_argument("--gdb-wait", action="store_true", help="hold the guest until gdb continues it")
    run.add_argument("--serial-input", metavar="FILE|-",
                     help="bytes for COM1's receiver: a file's, or standard input's as typed (-); "
                          "the guest reads them polled or through IRQ 4")
    _add_gdb_options(run)
    _add_overrides(run)
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check-determinism",
                           help="run a VM twice deterministically and once on host threads; compare")
    check.add_argument("config", metavar="CONFIG|KERNEL", help="VM configuration (TOML) or a multiboot kernel")
    _add_overrides(check)
    check.set_defaults(func=cmd_check_determinism)
    conf = sub.add_parser("conformance", help="run a conformance suite under hvdbg and QEMU, side by side")
    conf.add_argument("suite", choices=["kut"], help="kut: kvm-unit-tests (x86/unittests.cfg)")
    conf.add_argument("source", nargs="?", help="a kvm-unit-tests tree (built if needed)")
    conf.add_argument("--from", dest="tarball", help="a kvm-unit-tests .tar.gz snapshot to unpack and build")
    conf.add_argument("--build-dir", help="where to unpack --from (default: a temporary folder)")
    conf.add_argument("--case", action="append", default=[], help="run only this case (repeatable)")
    conf.add_argument("--no-qemu", action="store_true", help="do not run QEMU alongside")
    conf.add_argument("--overcommit", action="store_true", help="also run cases of 3+ vCPUs on 2 pCPUs")
    conf.add_argument("--timeout", type=int, help="cap every case's timeout (seconds)")
    conf.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    conf.set_defaults(func=cmd_conformance)
    shell = sub.add_parser("shell", help="interactive shell on a VM (inspect, run, stop, step)")
    shell.add_argument("config", metavar="CONFIG|KERNEL", help="VM configuration (TOML) or a multiboot kernel")
    shell.add_argument("--gdb", type=int, metavar="PORT", help="also serve GDB on PORT (and PORT+1+i)")
    _add_gdb_options(shell)
    shell.add_argument("-c", "--command", action="append", default=[],
                       help="run this shell command (repeatable) instead of the interactive prompt")
    _add_overrides(shell)
    shell.set_defaults(func=cmd_shell)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HvdbgError as e:
        print(f"hvdbg: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
