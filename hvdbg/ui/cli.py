"""The ``hvdbg`` command.  Every user error is one line on stderr and exit status 2;
never a Python traceback."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from hvdbg import __version__
from hvdbg.errors import HvdbgError


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vcpus", type=int, help="number of vCPUs (overrides the config)")
    p.add_argument("--pcpus", type=int, help="number of pCPUs (host threads)")
    p.add_argument("--memory", help="guest RAM, e.g. 16M")
    p.add_argument("--cmdline", help="kernel command line")
    p.add_argument("--sched", help="scheduling policy: pinned, fifo, rr, cfs, smp")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="one host thread, instruction-counted slices: same config, same trace")
    p.add_argument("--spin-skip", action="store_true", default=None, dest="spin_skip",
                   help="loops without progress skip the rest of their slice (and, pinned, yield the host core)")
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


def cmd_shell(args: argparse.Namespace) -> int:
    from hvdbg.ui.shell import run_shell

    return run_shell(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvdbg", description="Debug x86 VMX hypervisors and their SMP guests.")
    parser.add_argument("--version", action="version", version=f"hvdbg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a VM to its end and report the outcome")
    run.add_argument("config", help="VM configuration (TOML)")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument("--compact", action="store_true", help="with --json: on one line")
    run.add_argument("--quiet", action="store_true", help="print the serial output only at the end")
    run.add_argument("--gdb", type=int, metavar="PORT",
                     help="serve GDB: all vCPUs as threads on PORT, vCPU i alone on PORT+1+i")
    run.add_argument("--gdb-wait", action="store_true", help="hold the guest until gdb continues it")
    run.add_argument("--gdb-host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    _add_overrides(run)
    run.set_defaults(func=cmd_run)
    shell = sub.add_parser("shell", help="interactive shell on a VM (inspect, run, stop, step)")
    shell.add_argument("config", help="VM configuration (TOML)")
    shell.add_argument("--gdb", type=int, metavar="PORT", help="also serve GDB on PORT (and PORT+1+i)")
    shell.add_argument("--gdb-host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
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
