#!/usr/bin/env python3
"""Bug 4 inside a guest hypervisor: the minivisor launches each AP at the SIPI vector's host-physical address.
Then the same guest under the correct minivisor."""
import sys
from pathlib import Path

from hvdbg.api.scenario import main

HERE = Path(__file__).resolve().parent
FIXED = HERE.parent.parent / "guests" / "build" / "minivisor.elf"
sys.exit(main(HERE / "09-nested-sipi-hpa.toml", "guest hypervisor computes the SIPI entry from the HPA",
              [("the correct minivisor, same guest", {"kernel": str(FIXED)})]))
