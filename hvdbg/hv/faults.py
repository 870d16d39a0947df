"""The VMM bugs hvdbg reproduces on purpose, in one place (the scenarios of examples/bugs/
and docs/bugs.md).  Each is a config key; this module says what each one changes in the
hypervisor model, so that the model itself has no scattered "if bug" branches."""

from __future__ import annotations

from dataclasses import dataclass

from hvdbg.config import VmConfig
from hvdbg.platform.multiboot.spec import HEADER_MAGIC


@dataclass(frozen=True)
class InjectedFaults:
    """``sipi_uses_hpa``: the VMM computes the AP entry from the host-physical address, so
    an AP starts at (vector << 12) + gpa_hpa_offset (bug 4).  ``shared_apic_id``: CPUID
    reports APIC ID 0 on every vCPU, so APs pick the same stack (bug 5).
    ``loader_magic``: EAX at the kernel entry, None for the correct bootloader magic or
    "header" for the magic of the kernel's own header (bug 1)."""

    sipi_uses_hpa: bool = False
    shared_apic_id: bool = False
    loader_magic: int | str | None = None

    @classmethod
    def from_config(cls, config: VmConfig) -> "InjectedFaults":
        return cls(sipi_uses_hpa=config["faults.sipi_uses_hpa"],
                   shared_apic_id=config["cpuid.apic_ids"] == "same",
                   loader_magic=config["loader.magic"])

    def sipi_offset(self, gpa_hpa_offset: int) -> int:
        """What the VMM adds to the SIPI entry address (0 when correct)."""
        return gpa_hpa_offset if self.sipi_uses_hpa else 0

    def cpuid_apic_id(self, apic_id: int) -> int:
        """The initial APIC ID CPUID reports for a vCPU whose local APIC has ``apic_id``."""
        return 0 if self.shared_apic_id else apic_id

    def entry_magic(self, header_version: int | None) -> int | None:
        """EAX at the kernel entry (None: the loader's correct magic)."""
        if self.loader_magic == "header":
            return HEADER_MAGIC[header_version or 1]
        return self.loader_magic
