"""hvdbg: an emulated multi-vCPU VMX-style hypervisor for debugging SMP guests."""

__version__ = "0.1.0"
