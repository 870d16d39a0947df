#!/usr/bin/env python3
"""Bug 2: a 16 MiB guest touches memory past its RAM -> EPT violation."""
import sys
from pathlib import Path

from hvdbg.api.scenario import main

HERE = Path(__file__).resolve().parent
sys.exit(main(HERE / "02-ept-violation-16mib.toml", "16 MiB guest, 32 MiB workload",
              [("same workload with 64 MiB of RAM", {"memory": "64M"})]))
