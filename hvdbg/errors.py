"""Exceptions that reach the user as one clear line (never a traceback)."""


class HvdbgError(Exception):
    """Base class for every error hvdbg reports to the user."""


class ConfigError(HvdbgError):
    """A configuration file or command-line option is wrong."""


class GuestLoadError(HvdbgError):
    """The guest kernel image could not be found, parsed or loaded."""


class GuestMemoryError(HvdbgError):
    """A physical address is outside every mapped region."""


import enum  # noqa: E402 - the outcome vocabulary sits below the exception hierarchy


class Outcome(str, enum.Enum):
    """How a run ended: the ``outcome`` of ``hvdbg run --json`` (one value, set once by
    whatever ends the VM first).  A ``str`` enum: it compares equal to its value and
    serializes as it."""

    EXITED = "exited"                  # the guest ended itself (debug-exit port, exit hypercall)
    HANG = "hang"                      # no vCPU can make progress
    TRIPLE_FAULT = "triple_fault"      # shutdown (SDM 6.15, #DF during #DF delivery)
    EPT_VIOLATION = "ept_violation"    # SDM 29.3.3
    EPT_MISCONFIG = "ept_misconfig"    # SDM 29.3.3.1
    EXCEPTION = "exception"            # an exception the exception bitmap makes exit
    BUDGET = "budget"                  # instruction or time budget used up
    INTERNAL_ERROR = "internal_error"  # a bug in hvdbg; the guest state is kept
    FATAL = "fatal"                    # an exit no handler takes, a crashed vCPU thread
    STOPPED = "stopped"                # the user stopped the run
    KILLED = "killed"                  # gdb's kill

    def __str__(self) -> str:
        return self.value
