"""The public entry points of hvdbg: boot a config to its end (:func:`run`) or open it
under a debugger (:func:`open_debug`).

Overrides use the config schema keys (docs: ``hvdbg schema``), with ``__`` for the dot of
a section: ``run("examples/smp-4vcpu.toml", vcpus=2, deterministic=True,
cpuid__apic_ids="same")``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hvdbg.api import diagnosis
from hvdbg.config import VmConfig, load_config
from hvdbg.errors import Outcome
from hvdbg.hv.machine import Machine
from hvdbg.run.executors import Executor, make_executor

if TYPE_CHECKING:
    from hvdbg.debug.session import DebugSession


@dataclass(frozen=True)
class RunResult:
    """The end of one run: the machine (for a closer look), the JSON object of
    ``hvdbg run --json`` (see :func:`hvdbg.api.diagnosis.result`), the executor's
    scheduler statistics (None for the pinned executor, which has no scheduler) and the
    executor that ran it."""

    machine: Machine
    result: dict[str, Any]
    stats: dict[str, Any] | None
    wall_seconds: float
    executor: Executor

    @property
    def outcome(self) -> str:
        return self.result["outcome"]

    @property
    def exit_status(self) -> int | None:
        return self.result["exit_status"]


def make_config(config: str | Path | VmConfig, **overrides: Any) -> VmConfig:
    """Load ``config`` (a TOML path, or a copy of a :class:`VmConfig`) and apply the
    overrides (schema keys, ``__`` for ``.``), each validated like a file value."""
    if isinstance(config, VmConfig):
        cfg = replace(config, values=dict(config.values))
    else:
        cfg = load_config(config)
    for key, value in overrides.items():
        cfg.set(key.replace("__", "."), value)
    return cfg


def run(config: str | Path | VmConfig, *, include_stats: bool = True, stop_on_interrupt: bool = False,
        **overrides: Any) -> RunResult:
    """Boot ``config`` to its end (exit, hang, fault, budget) and classify it; see
    :func:`run_machine` for the keywords."""
    return run_machine(Machine(make_config(config, **overrides)), include_stats=include_stats,
                       stop_on_interrupt=stop_on_interrupt)


def run_machine(vm: Machine, *, include_stats: bool = True, stop_on_interrupt: bool = False) -> RunResult:
    """Run a machine built already (and maybe changed: a test device, a patched
    register) to its end and classify it.

    ``include_stats`` puts the scheduler statistics into ``result["sched"]`` as
    ``hvdbg run --json`` does; ``stop_on_interrupt`` ends the VM with outcome ``stopped``
    on Ctrl-C instead of raising KeyboardInterrupt."""
    start = time.monotonic()   # building the executor counts: it scans the image for PAUSE sites
    executor = make_executor(vm)
    try:
        executor.run()
    except KeyboardInterrupt:
        if not stop_on_interrupt:
            raise
        vm.end(Outcome.STOPPED, detail="interrupted by the user")
    wall = time.monotonic() - start
    stats = executor.stats()
    return RunResult(vm, diagnosis.result(vm, wall, stats if include_stats else None), stats, wall,
                     executor)


def open_debug(config: str | Path | VmConfig, *, start_paused: bool = False, **overrides: Any) -> DebugSession:
    """A VM of ``config`` under a :class:`~hvdbg.debug.session.DebugSession` (its
    executor thread not started yet: call ``start()``)."""
    from hvdbg.debug.session import DebugSession

    return DebugSession(Machine(make_config(config, **overrides)), start_paused=start_paused)


__all__ = ["RunResult", "make_config", "open_debug", "run", "run_machine"]
