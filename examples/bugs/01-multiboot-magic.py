#!/usr/bin/env python3
"""Bug 1: multiboot header magic in EAX -> the guest halts at its entry check."""
import sys
from pathlib import Path

from hvdbg.api.scenario import main

HERE = Path(__file__).resolve().parent
sys.exit(main(HERE / "01-multiboot-magic.toml", "multiboot magic 0x1BADB002 passed in EAX",
              [("same guest, loader passes 0x2BADB002", {"loader.magic": "bootloader"})]))
