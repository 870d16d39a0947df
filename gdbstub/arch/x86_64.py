"""x86-64 register layout, always the full 64-bit one.

GDB cannot change the register layout during a session, so the stub reports the
64-bit layout even while the CPU runs in real or protected (32-bit) mode; the
target zero-extends 16/32-bit state into it. This avoids GDB's "Remote 'g' packet
reply is too long" when a guest switches modes (QEMU system mode does the same).

Register set and names follow QEMU's ``gdb-xml/i386-64bit.xml``; grouping follows
GDB's standard features (GDB manual, "Standard Target Features" -> "i386 Features"):
``org.gnu.gdb.i386.core`` (GPRs, rip, eflags, segment selectors, x87),
``org.gnu.gdb.i386.sse`` (xmm0-15, mxcsr), ``org.gnu.gdb.i386.segments``
(fs_base, gs_base) and a system feature with k_gs_base, CR0/2/3/4/8 and EFER
(Intel SDM Vol. 3A, 2.5 "Control Registers" and 2.2.1 "Extended Feature Enable Register").
"""

from __future__ import annotations

from .base import (
    Arch,
    Feature,
    FlagField,
    FlagsType,
    RegisterDef,
    UnionType,
    VectorType,
)


def _flags(id_: str, size: int, fields: list[tuple[str, int, int]]) -> FlagsType:
    return FlagsType(id_, size, tuple(FlagField(n, s, e) for n, s, e in fields))


# Intel SDM Vol. 1, 3.4.3 "EFLAGS Register".
EFLAGS_TYPE = _flags("x64_eflags", 4, [
    ("CF", 0, 0), ("", 1, 1), ("PF", 2, 2), ("AF", 4, 4), ("ZF", 6, 6), ("SF", 7, 7),
    ("TF", 8, 8), ("IF", 9, 9), ("DF", 10, 10), ("OF", 11, 11), ("IOPL", 12, 13),
    ("NT", 14, 14), ("RF", 16, 16), ("VM", 17, 17), ("AC", 18, 18), ("VIF", 19, 19),
    ("VIP", 20, 20), ("ID", 21, 21),
])

# Intel SDM Vol. 3A, 2.5 "Control Registers".
CR0_TYPE = _flags("x64_cr0", 8, [
    ("PE", 0, 0), ("MP", 1, 1), ("EM", 2, 2), ("TS", 3, 3), ("ET", 4, 4), ("NE", 5, 5),
    ("WP", 16, 16), ("AM", 18, 18), ("NW", 29, 29), ("CD", 30, 30), ("PG", 31, 31),
])
CR3_TYPE = _flags("x64_cr3", 8, [("PCID", 0, 11), ("PDBR", 12, 63)])
CR4_TYPE = _flags("x64_cr4", 8, [
    ("VME", 0, 0), ("PVI", 1, 1), ("TSD", 2, 2), ("DE", 3, 3), ("PSE", 4, 4), ("PAE", 5, 5),
    ("MCE", 6, 6), ("PGE", 7, 7), ("PCE", 8, 8), ("OSFXSR", 9, 9), ("OSXMMEXCPT", 10, 10),
    ("UMIP", 11, 11), ("LA57", 12, 12), ("VMXE", 13, 13), ("SMXE", 14, 14),
    ("FSGSBASE", 16, 16), ("PCIDE", 17, 17), ("OSXSAVE", 18, 18), ("SMEP", 20, 20),
    ("SMAP", 21, 21), ("PKE", 22, 22),
])
# Intel SDM Vol. 3A, 2.2.1 "Extended Feature Enable Register".
EFER_TYPE = _flags("x64_efer", 8, [
    ("SCE", 0, 0), ("LME", 8, 8), ("LMA", 10, 10), ("NXE", 11, 11),
])
# Intel SDM Vol. 1, 10.2.3 "MXCSR Control and Status Register".
MXCSR_TYPE = _flags("x64_mxcsr", 4, [
    ("IE", 0, 0), ("DE", 1, 1), ("ZE", 2, 2), ("OE", 3, 3), ("UE", 4, 4), ("PE", 5, 5),
    ("DAZ", 6, 6), ("IM", 7, 7), ("DM", 8, 8), ("ZM", 9, 9), ("OM", 10, 10), ("UM", 11, 11),
    ("PM", 12, 12), ("FZ", 15, 15),
])

VEC128_TYPES = (
    VectorType("v4f", "ieee_single", 4),
    VectorType("v2d", "ieee_double", 2),
    VectorType("v16i8", "int8", 16),
    VectorType("v8i16", "int16", 8),
    VectorType("v4i32", "int32", 4),
    VectorType("v2i64", "int64", 2),
    UnionType("vec128", (
        ("v4_float", "v4f"), ("v2_double", "v2d"), ("v16_int8", "v16i8"),
        ("v8_int16", "v8i16"), ("v4_int32", "v4i32"), ("v2_int64", "v2i64"),
        ("uint128", "uint128"),
    )),
)

GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
POINTER_GPRS = {"rbp": "data_ptr", "rsp": "data_ptr"}
SEGMENT_NAMES = ("cs", "ss", "ds", "es", "fs", "gs")
X87_CONTROL_NAMES = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")

def core_feature(filename: str, gprs: tuple[str, ...], pointers: dict[str, str], bits: int,
                 pc: str) -> Feature:
    """GDB's ``org.gnu.gdb.i386.core``: the GPRs (``bits`` wide, pointers typed as such),
    the PC, eflags, the segment selectors and the x87 stack and control registers."""
    return Feature(
        name="org.gnu.gdb.i386.core",
        filename=filename,
        types=(EFLAGS_TYPE,),
        registers=(
            *(RegisterDef(n, bits, pointers.get(n, f"int{bits}")) for n in gprs),
            RegisterDef(pc, bits, "code_ptr"),
            RegisterDef("eflags", 32, EFLAGS_TYPE.id),
            *(RegisterDef(n, 32, "int32") for n in SEGMENT_NAMES),
            *(RegisterDef(f"st{i}", 80, "i387_ext", kind="bytes") for i in range(8)),
            *(RegisterDef(n, 32, "int", group="float") for n in X87_CONTROL_NAMES),
        ),
    )


def sse_feature(filename: str, count: int) -> Feature:
    """GDB's ``org.gnu.gdb.i386.sse``: ``count`` XMM registers (16 in 64-bit mode, else 8)
    and MXCSR."""
    return Feature(
        name="org.gnu.gdb.i386.sse",
        filename=filename,
        types=(*VEC128_TYPES, MXCSR_TYPE),
        registers=(
            *(RegisterDef(f"xmm{i}", 128, "vec128", kind="bytes") for i in range(count)),
            RegisterDef("mxcsr", 32, MXCSR_TYPE.id, group="vector"),
        ),
    )


CORE = core_feature("x86_64-core.xml", GPR_NAMES, POINTER_GPRS, 64, "rip")
SSE = sse_feature("x86_64-sse.xml", 16)

SEGMENT_BASES = Feature(
    name="org.gnu.gdb.i386.segments",
    filename="x86_64-segments.xml",
    registers=(RegisterDef("fs_base", 64, "int"), RegisterDef("gs_base", 64, "int")),
)

SYSTEM = Feature(
    name="org.gdbstub.x86_64.system",
    filename="x86_64-system.xml",
    types=(CR0_TYPE, CR3_TYPE, CR4_TYPE, EFER_TYPE),
    registers=(
        RegisterDef("k_gs_base", 64, "int64"),
        RegisterDef("cr0", 64, CR0_TYPE.id),
        RegisterDef("cr2", 64, "int64"),
        RegisterDef("cr3", 64, CR3_TYPE.id),
        RegisterDef("cr4", 64, CR4_TYPE.id),
        RegisterDef("cr8", 64, "int64"),
        RegisterDef("efer", 64, EFER_TYPE.id),
    ),
)

X86_64 = Arch(
    architecture="i386:x86-64",
    features=(CORE, SSE, SEGMENT_BASES, SYSTEM),
    pc_register="rip",
    expedite=("rbp", "rsp", "rip"),
)

#: ``kind`` GDB passes in Z0/z0 for x86: the length of ``int3``.
SW_BREAKPOINT_KIND = 1
