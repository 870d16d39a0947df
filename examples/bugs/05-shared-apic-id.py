#!/usr/bin/env python3
"""Bug 5: every vCPU reads the same CPUID APIC ID -> APs share a stack -> garbage RIP."""
import sys
from pathlib import Path

from hvdbg.api.scenario import main

HERE = Path(__file__).resolve().parent
sys.exit(main(HERE / "05-shared-apic-id.toml", "4 vCPUs, CPUID APIC ID 0 for all",
              [("2 vCPUs, same bug: only one AP, nothing collides", {"vcpus": 2}),
               ("4 vCPUs, correct CPUID APIC IDs", {"cpuid.apic_ids": "distinct"})]))
