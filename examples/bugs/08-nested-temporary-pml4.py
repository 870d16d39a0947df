#!/usr/bin/env python3
"""Bug 3 inside a guest hypervisor: the guest's boot PML4 lacks the high half; the minivisor's exception bitmap has bit 14, so the #PF is its VM exit (without it: a triple-fault exit).
Then the same guest under the correct minivisor."""
import sys
from pathlib import Path

from hvdbg.api.scenario import main

HERE = Path(__file__).resolve().parent
FIXED = HERE.parent.parent / "guests" / "build" / "minivisor.elf"
sys.exit(main(HERE / "08-nested-temporary-pml4.toml", "guest's PML4 lacks PML4E[511], #PF in the guest hypervisor's exception bitmap",
              [("the correct minivisor, same guest: the #PF finds no IDT and the guest's triple fault is the minivisor's exit", {"kernel": str(FIXED)})]))
