#!/usr/bin/env python3
"""Bug 1 inside a guest hypervisor: the minivisor's loader enters its guest with EAX = 0x1BADB002.
Then the same guest under the correct minivisor."""
import sys
from pathlib import Path

from hvdbg.api.scenario import main

HERE = Path(__file__).resolve().parent
FIXED = HERE.parent.parent / "guests" / "build" / "minivisor.elf"
sys.exit(main(HERE / "06-nested-multiboot-magic.toml", "guest hypervisor's loader passes the header magic",
              [("the correct minivisor, same guest", {"kernel": str(FIXED)})]))
