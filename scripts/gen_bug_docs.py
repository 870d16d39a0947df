#!/usr/bin/env python3
"""Regenerate docs/bugs.md: every command below is run and its real output embedded."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HV = [sys.executable, "-m", "hvdbg.ui.cli"]

BUGS = [
    ("01-multiboot-magic", "Multiboot magic hang",
     "The loader passes the multiboot *header* magic 0x1BADB002 in EAX instead of the bootloader "
     "magic 0x2BADB002; the guest's entry check jumps to `bad_magic_halt` (`cli; hlt`) and nothing "
     "is ever printed. hvdbg's hang detector sees every vCPU stuck, names the halted function and "
     "compares EAX at entry with the spec.",
     ["mb", "vcpus"]),
    ("02-ept-violation-16mib", "EPT violation past 16 MiB",
     "16 MiB of guest RAM; the guest's workload allocates 32 MiB after the kernel without reading "
     "the multiboot memory map, and its first write past the end of RAM is an EPT violation.",
     ["vmcs 0 exit", "pt walk 0xffffff8001000000"]),
    ("03-temporary-pml4", "Temporary PML4 missing a mapping",
     "The boot page tables lack PML4E[511], the high half the boot code jumps through. The #PF "
     "finds no IDT, #DF neither: shutdown. No VM exit shows the #PF because bit 14 of the "
     "exception bitmap is clear; the script's second run sets it and the #PF is the VM exit.",
     ["exits", "pt walk 0xffffff800010009b"]),
    ("04-sipi-hpa-offset", "SIPI entry off by the GPA/HPA offset",
     "Guest RAM lives at host-physical 0x10000000. The VMM turns the SIPI vector into the AP's "
     "entry with the host-physical address, so the AP starts 0x10000000 too high.",
     ["vcpus", "exits 6"]),
    ("05-shared-apic-id", "More than two vCPUs: APs run into garbage",
     "CPUID gives every vCPU initial APIC ID 0; the guest picks each AP's stack by that ID, so "
     "the APs share one stack. With 2 vCPUs there is one AP and nothing collides; with 4, the "
     "first AP released prints from a line buffer on the shared stack, over the return address "
     "of an AP still parked, which then returns into text.",
     ["cpuid 2 1", "vcpus"]),
    # the same five bugs inside a guest hypervisor: guests/minivisor on hvdbg's nested VMX
    ("06-nested-multiboot-magic", "Inside a guest hypervisor: its loader passes the header magic",
     "guests/minivisor (a small VMX hypervisor, docs/nested.md) loads the smp kernel as its guest and enters it "
     "with EAX = 0x1BADB002. The guest halts in `bad_magic_halt`, in L2; hvdbg reads L2's EAX at the guest "
     "hypervisor's first VM entry.",
     ["vmx 0", "vmx vmcs 0 guest"]),
    ("07-nested-ept-16mib", "Inside a guest hypervisor: its EPT maps 16 MiB",
     "The minivisor tells its guest 64 MiB but its EPT maps 16; the guest's first write past 16 MiB is an EPT "
     "violation the guest hypervisor stops on. hvdbg walks the guest hypervisor's own EPT.",
     ["vmx vmcs 0 exit", "vmx ept 0x1000000 0"]),
    ("08-nested-temporary-pml4", "Inside a guest hypervisor: the guest's temporary PML4, #PF in its exception bitmap",
     "The guest's boot PML4 lacks PML4E[511]; the minivisor's exception bitmap has bit 14, so the #PF is its VM "
     "exit. Under the correct minivisor (bit 14 clear) the same guest's triple fault is the exit.",
     ["vmx vmcs 0 exit", "exits 4"]),
    ("09-nested-sipi-hpa", "Inside a guest hypervisor: the SIPI entry from the HPA",
     "The minivisor turns its guest's SIPI vector into the AP's entry with the host-physical address (its EPT "
     "offset is 256 MiB): the AP's first fetch is past the guest's memory.",
     ["vmx 1", "vmx vmcs 1 guest", "vmx ept 0x8000 1"]),
    ("10-nested-shared-apic-id", "Inside a guest hypervisor: one APIC ID for every vCPU",
     "The minivisor's CPUID handler answers initial APIC ID 0 on every vCPU; the guest's APs share one stack, "
     "as in bug 5.",
     ["vmx 2", "exits 5 2"]),
]


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    return (out.stdout + out.stderr).rstrip()


def gdb_session() -> str:
    port = 5711
    hv = subprocess.Popen(HV + ["run", "examples/bugs/05-shared-apic-id.toml", "--gdb", str(port), "--gdb-wait"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    hv.stderr.readline()  # the stubs are listening
    cmd = ["gdb", "-nx", "-q", "-batch", "-ex", "file guests/build/smp.elf", "-ex", f"target remote 127.0.0.1:{port}",
           "-ex", "break ap_poll_release", "-ex", "continue", "-ex", "p/x $rsp", "-ex", "continue",
           "-ex", "p/x $rsp", "-ex", "info threads", "-ex", "delete", "-ex", "continue"]
    out = run(cmd)
    hv.wait(60)
    return "\n".join(ln for ln in out.splitlines() if ln.strip())


def main():
    parts = ["# The five SMP bring-up bugs, replayed and explained (and inside a guest hypervisor)",
             "",
             "Each bug is a config and a script in `examples/bugs/`; every run is deterministic",
             "(`deterministic = true`): the same diagnosis and exit-trace hash every time",
             "(tests/test_bug_scenarios.py runs each 3 times). This page is generated by",
             "`python scripts/gen_bug_docs.py`; all output below is real.", ""]
    for name, title, story, shell_cmds in BUGS:
        script = f"examples/bugs/{name}.py"
        out = run([sys.executable, script])
        lines = [ln if len(ln) < 400 else ln[:400] + " ..." for ln in out.splitlines()]
        parts += [f"## {title}", "", story, "", f"    $ python {script}", ""]
        parts += ["    " + ln for ln in lines[:-1]]
        parts += ["    {\"outcome\": ... the JSON line of hvdbg run --json}", ""]
        cmd = HV + ["shell", f"examples/bugs/{name}.toml", "-c", "continue"]
        for c in shell_cmds:
            cmd += ["-c", c]
        shown = " ".join(f"-c '{c}'" for c in ["continue"] + shell_cmds)
        parts += ["In the shell (or `monitor ...` from gdb):", "",
                  f"    $ hvdbg shell examples/bugs/{name}.toml {shown}", ""]
        parts += ["    " + ln for ln in run(cmd).splitlines()]
        parts += [""]
    parts += ["## With gdb: two APs on one stack", "",
              "Any scenario can be debugged live. Bug 5 with real gdb: both APs stop in "
              "`ap_poll_release` with the same `$rsp`, and the guest then dies with status 0x8d "
              "(gdb prints it in octal). See docs/gdb.md.", "",
              "    $ hvdbg run examples/bugs/05-shared-apic-id.toml --gdb 1234 --gdb-wait &",
              "    $ gdb -batch guests/build/smp.elf -ex 'target remote :1234' -ex 'break ap_poll_release' \\",
              "          -ex continue -ex 'p/x $rsp' -ex continue -ex 'p/x $rsp' -ex 'info threads' -ex delete -ex continue",
              ""]
    parts += ["    " + ln for ln in gdb_session().splitlines()]
    parts += [""]
    (ROOT / "docs" / "bugs.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
