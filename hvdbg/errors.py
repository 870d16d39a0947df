"""Exceptions that reach the user as one clear line (never a traceback)."""


class HvdbgError(Exception):
    """Base class for every error hvdbg reports to the user."""


class ConfigError(HvdbgError):
    """A configuration file or command-line option is wrong."""


class GuestLoadError(HvdbgError):
    """The guest kernel image could not be found, parsed or loaded."""


class GuestMemoryError(HvdbgError):
    """A physical address is outside every mapped region."""
