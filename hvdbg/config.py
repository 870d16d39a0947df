"""VM configuration: a TOML file, validated against a schema kept as data.

Every wrong key, type or value becomes one :class:`ConfigError` line that names the
key.  docs/config.md is the user-facing description of the same table.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hvdbg.arch.apic import XAPIC_BASE
from hvdbg.arch.cpuid import parse_cpu_spec
from hvdbg.vmx.ept import DEFAULT_CAPS
from hvdbg.errors import ConfigError
from hvdbg.platform.memory import GuestMemory

MiB = 1 << 20
#: Guest RAM starts at GPA 0 and must end below the local APIC page (SDM Vol. 3A 11.4.1).
MAX_MEMORY = XAPIC_BASE
#: The EPT maps host-physical addresses of up to MAXPHYADDR bits (CPUID.80000008H:EAX[7:0]).
HOST_ADDRESS_LIMIT = 1 << DEFAULT_CAPS.maxphyaddr
#: Longest scheduling slice: Unicorn counts a run's instructions, keep it a sane 32-bit count.
MAX_SLICE = 1 << 32
MAGIC_CHOICES = {"bootloader": None, "header": "header"}
SCHED_POLICIES = ("pinned", "fifo", "rr", "cfs", "smp")


def _size(value: Any) -> int:
    """Accept 128, "128M", "16MiB", "1G", "0x8000000"."""
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, int):
        return value * MiB if value < 65536 else value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(0x[0-9a-fA-F]+|\d+)\s*([KMG]i?B?|)\s*", value)
        if m:
            num = int(m.group(1), 0)
            unit = m.group(2)[:1].upper()
            return num * {"": 1, "K": 1 << 10, "M": MiB, "G": 1 << 30}[unit]
    raise ValueError("expected a size such as 128, \"128M\" or \"1G\"")


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.replace("_", ""), 0)
        except ValueError:
            pass
    raise ValueError("expected an integer")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("expected true or false")


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError("expected a string")


def _str_list(value: Any) -> list[str]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError("expected a list of strings")


def _cpu_spec(value: Any) -> str:
    parse_cpu_spec(_str(value))   # ValueError names the model or flag
    return value


def _int_list(value: Any) -> list[int]:
    if isinstance(value, list):
        return [_int(v) for v in value]
    raise ValueError("expected a list of integers")


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise ValueError(f"expected one of {', '.join(repr(c) for c in choices)}")
    return check


def _magic(value: Any) -> int | str | None:
    if isinstance(value, str) and value in MAGIC_CHOICES:
        return MAGIC_CHOICES[value]
    try:
        return _int(value)
    except ValueError:
        raise ValueError("expected \"bootloader\", \"header\" or an integer such as 0x1BADB002") from None


def _affinity(value: Any) -> dict[int, list[int]]:
    if not isinstance(value, dict):
        raise ValueError("expected a table such as { 0 = [0], 1 = [1] }")
    out = {}
    for k, v in value.items():
        if not (isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)):
            raise ValueError(f"vCPU {k}: expected a list of pCPU numbers")
        out[_int(k)] = list(v)
    return out


def _affinity_weights(value: Any) -> dict[int, int]:
    if not isinstance(value, dict):
        raise ValueError("expected a table such as { 0 = 2048 }")
    out = {}
    for k, v in value.items():
        w = _int(v)
        if not 1 <= w <= 1 << 20:
            raise ValueError(f"vCPU {k}: weight must be between 1 and 1048576")
        out[_int(k)] = w
    return out


@dataclass(frozen=True)
class Option:
    key: str                 # "vcpus" or "cpuid.x2apic"
    parse: Callable[[Any], Any]
    default: Any
    doc: str


# The schema, as data.  docs/config.md mirrors this table.
SCHEMA: tuple[Option, ...] = (
    Option("kernel", _str, None, "guest kernel (multiboot 1 or 2 image); relative to the config file"),
    Option("cmdline", _str, "", "kernel command line passed in the multiboot information"),
    Option("modules", _str_list, [], "multiboot modules (paths; relative to the config file)"),
    Option("disk", _str, "", "disk image for the ATA disk on the primary channel (0x1F0, IRQ 14; docs/platform.md); "
           "relative to the config file; empty: no disk"),
    Option("disk_write_back", _bool, False, "write the guest's sector writes into the image file (default: "
           "copy-on-write in memory, the image is never changed)"),
    Option("memory", _size, 128 * MiB, "guest RAM size (16M .. 4078M: RAM ends below the local APIC page at 0xFEE00000)"),
    Option("gpa_hpa_offset", _int, 0, "host-physical address of guest-physical 0 (EPT maps GPA -> GPA + offset); "
           "RAM and the hypervisor's 4 MiB page pool after it must fit in 46 bits"),
    Option("vcpus", _int, 1, "number of vCPUs (1 .. 64)"),
    Option("pcpus", _int, 0, "number of pCPUs (host threads); 0 = one per vCPU"),
    Option("sched", _choice(*SCHED_POLICIES), "pinned", "vCPU scheduling policy when vCPUs share pCPUs: pinned, fifo, rr, cfs or smp (CFS + spin/IPI awareness, docs/scheduling.md)"),
    Option("weights", _affinity_weights, {}, "per-vCPU CFS weights, e.g. { 0 = 2048 } (default 1024)"),
    Option("deterministic", _bool, True, "run every vCPU on one host thread in instruction-counted slices "
           "(false: host threads; no faster, since one engine executes at a time)"),
    Option("spin_skip", _bool, False, "a vCPU caught in a loop without progress (the hang detector's test) runs 840-instruction probes and the rest of each slice passes as idle virtual time, as if the loop ran slower; the pinned executor also yields the host core for 0.5 ms. Cuts the host time of many-vCPU boots (deterministic: same exit trace; fewer executed instructions)"),
    Option("slice", _int, 50_000, "time slice in guest instructions (100 .. 2^32)"),
    Option("affinity", _affinity, {}, "per-vCPU allowed pCPUs, e.g. { 0 = [0], 1 = [1] }"),
    Option("cpu", _cpu_spec, "hvdbg", "CPU model and features in QEMU's -cpu spelling: \"hvdbg\" (default), "
           "\"qemu64\" or \"max\", then +FLAG / -FLAG, e.g. \"max,-pku\" (docs/config.md lists them)"),
    Option("cpuid.x2apic", _bool, False, "report x2APIC support in CPUID.1:ECX[21]"),
    Option("cpuid.apic_ids", _choice("distinct", "same"), "distinct",
           "initial APIC IDs reported by CPUID: 'distinct' (correct) or 'same' (every vCPU reads 0: a bug scenario)"),
    Option("loader.kernel_name", _bool, False, "put the kernel's path first in the multiboot command line, as "
           "QEMU -kernel and GRUB do (argv[0] for kvm-unit-tests; Xen skips the first word). "
           "Off in a TOML (the command line is passed as written), on for `hvdbg run KERNEL`"),
    Option("loader.magic", _magic, None, "EAX at entry: \"bootloader\" (correct), \"header\" (the header magic: a bug scenario) or a number"),
    Option("budget.instructions", _int, 4_000_000_000, "stop after this many guest instructions in total"),
    Option("budget.seconds", _int, 120, "stop after this many host seconds"),
    Option("budget.idle_slices", _int, 200, "a vCPU spinning this many slices without a VM exit counts as hung (at least 1)"),
    Option("vmx.exception_bitmap", _int, 0, "VMCS exception bitmap: exceptions whose vector bit is set cause a VM exit (bit 14 = #PF)"),
    Option("vmx.preemption_timer", _int, 0, "VMX-preemption timer value (counts down every 32 guest instructions; 0 = off): a timer exit (reason 52) each time it expires"),
    Option("vmx.io_passthrough", _int_list, [], "I/O ports whose I/O-bitmap bit is clear: the guest reaches the device without a VM exit"),
    Option("vmx.unrestricted_guest", _bool, True, "secondary control 'unrestricted guest' (real-mode APs)"),
    Option("faults.sipi_uses_hpa", _bool, False, "VMM bug: compute the SIPI entry from the host-physical address (adds gpa_hpa_offset)"),
    Option("platform.fw_cfg", _bool, True, "QEMU's fw_cfg at I/O ports 0x510/0x511: signature, CPU count, RAM size, etc/e820 (docs/platform.md)"),
    Option("platform.acpi_pm", _bool, True, "ACPI FADT, FACS and a DSDT with \\_S5, the PM1a blocks at 0x600 and the 3.579545 MHz PM timer at 0x608 on the VM's clock (one guest instruction = 1 ns; docs/platform.md)"),
    Option("output.echo_serial", _bool, False, "copy guest serial output to stdout while running"),
)
_BY_KEY = {o.key: o for o in SCHEMA}


@dataclass
class VmConfig:
    """A validated configuration; ``cfg["cpuid.x2apic"]`` reads a value by its schema key."""

    path: Path | None = None
    values: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str) -> Any:
        return self.values[key]

    def set(self, key: str, value: Any) -> None:
        """Apply a command-line override, validated like a file value."""
        self.values[key] = _check(key, value, source="command line")
        _cross_check(self.values, "command line")

    @property
    def kernel_path(self) -> Path:
        return Path(self.values["kernel"])

    def module_paths(self) -> list[Path]:
        return [Path(m) for m in self.values["modules"]]


def _check(key: str, value: Any, source: str) -> Any:
    opt = _BY_KEY.get(key)
    if opt is None:
        raise ConfigError(f"{source}: unknown key '{key}'")
    try:
        return opt.parse(value)
    except ValueError as e:
        raise ConfigError(f"{source}: '{key}': {e} (got {value!r})") from None


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in _BY_KEY:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _host_end(memory: int, offset: int) -> int:
    """End of the host-physical range a VM uses: guest RAM at ``offset``, then the page pool
    of the EPT tables at the next 2 MiB boundary (as hvdbg.platform.memory.GuestMemory places them)."""
    pool = (offset + memory + 2 * MiB - 1) & ~(2 * MiB - 1)
    return pool + GuestMemory.POOL_SIZE


def _cross_check(values: dict[str, Any], source: str) -> None:
    mem = values["memory"]
    if not (16 * MiB <= mem <= MAX_MEMORY) or mem % (1 << 12):
        raise ConfigError(f"{source}: 'memory': must be a multiple of 4 KiB between 16M and {MAX_MEMORY >> 20}M "
                          f"(RAM ends below the local APIC page at {XAPIC_BASE:#x}) (got {mem:#x})")
    if not 1 <= values["vcpus"] <= 64:
        raise ConfigError(f"{source}: 'vcpus': must be between 1 and 64 (got {values['vcpus']})")
    if not 0 <= values["pcpus"] <= 64:
        raise ConfigError(f"{source}: 'pcpus': must be between 0 and 64 (got {values['pcpus']})")
    off = values["gpa_hpa_offset"]
    if off < 0 or off % (1 << 12) or _host_end(mem, off) > HOST_ADDRESS_LIMIT:
        raise ConfigError(f"{source}: 'gpa_hpa_offset': must be a 4 KiB-aligned address such that guest RAM and "
                          f"the hypervisor's pages after it end below 2^{DEFAULT_CAPS.maxphyaddr} (got {off:#x} "
                          f"with {mem >> 20}M of RAM)")
    if not 100 <= values["slice"] <= MAX_SLICE:
        raise ConfigError(f"{source}: 'slice': must be between 100 and 2^32 guest instructions (got {values['slice']})")
    for key in ("budget.instructions", "budget.seconds"):
        if values[key] <= 0:
            raise ConfigError(f"{source}: '{key}': must be positive (got {values[key]})")
    for key in ("loader.magic", "vmx.exception_bitmap"):  # EAX at entry; a 32-bit VMCS field (SDM 25.6.3)
        if isinstance(values[key], int) and not 0 <= values[key] < 1 << 32:
            raise ConfigError(f"{source}: '{key}': must be a 32-bit value (got {values[key]:#x})")
    if values["budget.idle_slices"] < 1:
        raise ConfigError(f"{source}: 'budget.idle_slices': must be at least 1 (got {values['budget.idle_slices']})")
    for v, cpus in values["affinity"].items():
        if not 0 <= v < values["vcpus"]:
            raise ConfigError(f"{source}: 'affinity': no vCPU {v}")


def config_from_dict(data: dict[str, Any], base_dir: Path | None = None, source: str = "config") -> VmConfig:
    values = {o.key: o.default for o in SCHEMA}
    for key, raw in _flatten(data).items():
        values[key] = _check(key, raw, source)
    if values["kernel"] is None:
        raise ConfigError(f"{source}: 'kernel' is required (path to a multiboot kernel)")
    if base_dir is not None:
        values["kernel"] = str((base_dir / values["kernel"]).resolve())
        values["modules"] = [str((base_dir / m).resolve()) for m in values["modules"]]
        if values["disk"]:
            values["disk"] = str((base_dir / values["disk"]).resolve())
    _cross_check(values, source)
    return VmConfig(values=values)


def load_config(path: str | Path) -> VmConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")  # TOML files are UTF-8 (TOML 1.0, "Spec")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: not UTF-8 (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    cfg = config_from_dict(data, p.resolve().parent, str(p))
    cfg.path = p
    return cfg


def config_for_kernel(kernel: str | Path, **values: Any) -> VmConfig:
    """The configuration of ``hvdbg run KERNEL`` (no TOML): the schema's defaults, the
    kernel's path first on its command line as QEMU puts it, then ``values`` (paths
    relative to the working directory)."""
    data: dict[str, Any] = {"kernel": str(kernel), "loader": {"kernel_name": True}}
    for key, value in values.items():
        section, _, name = key.rpartition(".")
        (data.setdefault(section, {}) if section else data)[name] = value
    return config_from_dict(data, Path.cwd(), str(kernel))


def schema_markdown() -> str:
    """The configuration reference table (docs/config.md is generated from this)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for o in SCHEMA:
        default = "(required)" if o.default is None and o.key == "kernel" else repr(o.default)
        if o.key == "memory":
            default = "128M"
        rows.append(f"| `{o.key}` | `{default}` | {o.doc} |")
    return "\n".join(rows)
