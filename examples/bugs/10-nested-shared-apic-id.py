#!/usr/bin/env python3
"""Bug 5 inside a guest hypervisor: the minivisor's CPUID handler gives every vCPU initial APIC ID 0.
Then the same guest under the correct minivisor."""
import sys
from pathlib import Path

from hvdbg.api.scenario import main

HERE = Path(__file__).resolve().parent
FIXED = HERE.parent.parent / "guests" / "build" / "minivisor.elf"
sys.exit(main(HERE / "10-nested-shared-apic-id.toml", "guest hypervisor answers CPUID with one APIC ID",
              [("the correct minivisor, same guest", {"kernel": str(FIXED)})]))
