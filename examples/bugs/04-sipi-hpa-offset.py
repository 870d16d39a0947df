#!/usr/bin/env python3
"""Bug 4: the VMM computes the SIPI entry from the host-physical address."""
import sys
from pathlib import Path

from hvdbg.api.scenario import main

HERE = Path(__file__).resolve().parent
sys.exit(main(HERE / "04-sipi-hpa-offset.toml", "SIPI entry computed from the HPA",
              [("VMM fixed: SIPI entry from the GPA", {"faults.sipi_uses_hpa": False})]))
