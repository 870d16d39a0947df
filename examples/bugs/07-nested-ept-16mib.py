#!/usr/bin/env python3
"""Bug 2 inside a guest hypervisor: it tells its guest 64 MiB and maps 16 MiB in its EPT.
Then the same guest under the correct minivisor."""
import sys
from pathlib import Path

from hvdbg.api.scenario import main

HERE = Path(__file__).resolve().parent
FIXED = HERE.parent.parent / "guests" / "build" / "minivisor.elf"
sys.exit(main(HERE / "07-nested-ept-16mib.toml", "guest hypervisor's EPT maps 16 MiB",
              [("the correct minivisor, same guest", {"kernel": str(FIXED)})]))
