#!/usr/bin/env python3
"""Bug 3: temporary PML4 without the high-half mapping -> #PF with no IDT -> triple fault;
then the same run with bit 14 of the exception bitmap set, where the #PF is the VM exit."""
import sys
from pathlib import Path

from hvdbg.api.scenario import main

HERE = Path(__file__).resolve().parent
sys.exit(main(HERE / "03-temporary-pml4.toml", "boot PML4 without PML4E[511]",
              [("exception bitmap bit 14 set (vmx.exception_bitmap = 0x4000)", {"vmx.exception_bitmap": 0x4000})]))
