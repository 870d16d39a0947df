"""The hvdbg command layer: one registry of inspection and run-control commands, served
by the interactive shell (:mod:`hvdbg.ui.shell`) and by GDB's ``monitor`` (qRcmd).

Modules: :mod:`.registry` (the data types, binding, completion), :mod:`.args` (the
argument grammar), :mod:`.context` (the state of one shell), and one handler module per
area, each registering its commands: :mod:`.vmx`, :mod:`.memory`, :mod:`.cpu`,
:mod:`.exits`, :mod:`.run`, :mod:`.misc`, and :mod:`.qemu_monitor` (the QEMU
monitor subset gdb front-ends parse).  Text is rendered by :mod:`hvdbg.ui.render`.

Nothing here evaluates Python, reads host files or runs programs: ``monitor`` hands
these commands to whoever can reach the GDB port, so they only look at the VM.

Arguments: numbers are hex (``0x..``) or decimal; addresses also accept ELF symbols,
``symbol+offset`` and ``$register`` of the vCPU in question.  A ``[VCPU]`` argument is a
decimal vCPU index; when a number could be either a vCPU or the next argument, it is
the vCPU if such a vCPU exists (``step 2`` steps vCPU 2 of a 4-vCPU VM).
"""

from __future__ import annotations

# the handler modules register their commands in this order (the order of 'help')
from hvdbg.ui.commands import vmx, memory, cpu, exits, run, misc, qemu_monitor  # noqa: F401  isort: skip
from hvdbg.ui.commands.args import CommandError
from hvdbg.ui.commands.context import Call, CommandContext, Outcome, make_monitor
from hvdbg.ui.commands.misc import cmd_sched
from hvdbg.ui.commands.registry import CATEGORIES, Command, Param, commands

#: Every command, in the order ``help`` lists them.
COMMANDS = commands()

__all__ = ["COMMANDS", "CATEGORIES", "Call", "Command", "CommandContext", "CommandError", "Outcome", "Param",
           "cmd_sched", "make_monitor"]
