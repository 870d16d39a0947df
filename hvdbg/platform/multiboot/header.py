"""Finding and decoding the multiboot header of an OS image.

Multiboot 1 (0.6.96) 3.1: the header is 4-byte aligned and lies completely
within the first 8192 bytes of the image.  Multiboot2 (1.0) 3.1: 8-byte
aligned, within the first 32768 bytes, followed by 8-byte aligned tags.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hvdbg.platform.multiboot import spec

U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class AddressFields:
    """Where to load a non-ELF image (MB1 3.1.3 address fields, MB2 3.1.5 address tag)."""

    header_addr: int
    load_addr: int
    load_end_addr: int
    bss_end_addr: int


@dataclass(frozen=True)
class VideoRequest:
    """Preferred video mode (MB1 3.1.4 graphics fields, MB2 3.1.10 framebuffer tag)."""

    width: int
    height: int
    depth: int
    mode_type: int | None = None   # MB1 only: 0 = linear graphics, 1 = EGA text


@dataclass(frozen=True)
class RelocatableRequest:
    """MB2 3.1.13 relocatable header tag."""

    min_addr: int
    max_addr: int
    align: int
    preference: int


@dataclass(frozen=True)
class HeaderTag:
    """One raw multiboot 2 header tag (MB2 3.1.4 general tag structure)."""

    type: int
    flags: int
    size: int
    offset: int        # file offset of the tag
    payload: bytes     # the bytes after the 8-byte type/flags/size prefix

    @property
    def optional(self) -> bool:
        return bool(self.flags & spec.MB2_TAG_OPTIONAL)

    @property
    def name(self) -> str:
        return spec.MB2_HEADER_TAG_NAMES.get(self.type, f"unknown tag {self.type}")


@dataclass
class MultibootHeader:
    """A decoded multiboot 1 or 2 header.

    ``problems`` are reasons a conforming loader must refuse the image;
    ``warnings`` are requests hvdbg understands but does not honour.
    """

    version: int
    offset: int
    magic: int
    checksum: int
    checksum_valid: bool
    flags: int = 0                          # MB1 flags word
    architecture: int | None = None         # MB2
    header_length: int | None = None        # MB2
    address: AddressFields | None = None    # MB1 flag 16 / MB2 address tag
    entry_addr: int | None = None           # MB1 flag 16 / MB2 entry address tag
    video: VideoRequest | None = None       # MB1 flag 2 / MB2 framebuffer tag
    tags: list[HeaderTag] = field(default_factory=list)
    info_requests: list[int] = field(default_factory=list)
    info_requests_required: bool = False
    console_flags: int | None = None
    module_align: bool = False
    relocatable: RelocatableRequest | None = None
    efi_boot_services: bool = False
    efi_i386_entry: int | None = None
    efi_amd64_entry: int | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def end(self) -> int:
        """File offset just past the header (MB1: the fields its flags use)."""
        if self.version == 2:
            return self.offset + (self.header_length or spec.MB2_HEADER_FIXED_SIZE)
        return self.offset + _mb1_header_size(self.flags)


def find_header(image: bytes, version: int | None = None) -> MultibootHeader | None:
    """Find the multiboot header of ``image``.

    With ``version`` None both kinds are searched; when an image carries both,
    a header with a correct checksum wins, and multiboot 1 is preferred over
    multiboot 2 (as QEMU's ``-kernel`` does).  A header whose checksum is wrong
    is still returned (with the problem listed) when it is the only one.
    """
    headers = find_headers(image, version)
    return min(headers, key=lambda h: (not h.checksum_valid, h.version), default=None)


def find_headers(image: bytes, version: int | None = None) -> list[MultibootHeader]:
    """Every multiboot header of ``image``: at most one per version."""
    versions = (1, 2) if version is None else (version,)
    found = []
    for v in versions:
        offset = _scan(image, v)
        if offset is not None:
            found.append(_parse_mb1(image, offset) if v == 1 else _parse_mb2(image, offset))
    return found


def _scan(image: bytes, version: int) -> int | None:
    """Offset of the first header magic with a good checksum, else of the first magic."""
    magic = spec.HEADER_MAGIC[version]
    fields = 3 if version == 1 else 4           # words covered by the checksum
    limit = min(len(image), spec.SEARCH_LIMIT[version]) - 4 * fields
    first = None
    for offset in range(0, limit + 1, spec.SEARCH_ALIGN[version]):
        if struct.unpack_from("<I", image, offset)[0] != magic:
            continue
        if sum(struct.unpack_from(f"<{fields}I", image, offset)) & U32 == 0:
            return offset
        if first is None:
            first = offset
    return first


def _mb1_header_size(flags: int) -> int:
    if flags & spec.MB1_FLAG_VIDEO_MODE:
        return spec.MB1_HEADER_SIZE_VIDEO
    if flags & spec.MB1_FLAG_AOUT_KLUDGE:
        return spec.MB1_HEADER_SIZE_ADDRESS
    return spec.MB1_HEADER_SIZE


def _parse_mb1(image: bytes, offset: int) -> MultibootHeader:
    """Decode a multiboot 1 header (MB1 3.1.1 - 3.1.4)."""
    magic, flags, checksum = struct.unpack_from("<3I", image, offset)
    total = (magic + flags + checksum) & U32
    hdr = MultibootHeader(1, offset, magic, checksum, total == 0, flags=flags)
    if total:
        hdr.problems.append(
            f"multiboot 1 header checksum is wrong: magic {magic:#x} + flags {flags:#x}"
            f" + checksum {checksum:#x} = {total:#x}, not 0 (the checksum should be"
            f" {-(magic + flags) & U32:#x}, {spec.MB1_SPEC} 3.1.2)")
    unknown = flags & spec.MB1_REQUIRED_FLAG_MASK & ~_known_mb1_flags()
    if unknown:
        bits = ", ".join(str(b) for b in range(16) if unknown >> b & 1)
        hdr.problems.append(
            f"multiboot 1 header requires unknown feature flag bit(s) {bits}"
            f" (flags {flags:#x}); a loader must refuse bits 0-15 it does not"
            f" understand ({spec.MB1_SPEC} 3.1.2)")
    size = _mb1_header_size(flags)
    if offset + size > len(image):
        hdr.problems.append(
            f"multiboot 1 header at file offset {offset:#x} is cut short: its flags"
            f" {flags:#x} need {size} bytes but the file ends at {len(image):#x}")
        return hdr
    if offset + size > spec.SEARCH_LIMIT[1]:
        hdr.warnings.append(f"multiboot 1 header ends at {offset + size:#x}, past the"
                            f" first {spec.SEARCH_LIMIT[1]} bytes where it must lie")
    if flags & spec.MB1_FLAG_AOUT_KLUDGE:
        header_addr, load_addr, load_end, bss_end, entry = struct.unpack_from(
            "<5I", image, offset + 12)
        hdr.address = AddressFields(header_addr, load_addr, load_end, bss_end)
        hdr.entry_addr = entry
    if flags & spec.MB1_FLAG_VIDEO_MODE:
        mode_type, width, height, depth = struct.unpack_from("<4I", image, offset + 32)
        hdr.video = VideoRequest(width, height, depth, mode_type)
        hdr.warnings.append("the kernel asks for video mode information (flag bit 2);"
                            " hvdbg has no display and passes none")
    return hdr


def _known_mb1_flags() -> int:
    return sum(1 << bit for bit in spec.MB1_HEADER_FLAG_NAMES)


# Smallest valid size of each multiboot 2 header tag (MB2 3.1.5 - 3.1.13).
_MB2_TAG_MIN_SIZE: dict[int, int] = {1: 8, 2: 24, 3: 12, 4: 12, 5: 20, 6: 8, 7: 8,
                                     8: 12, 9: 12, 10: 24}


def _parse_mb2(image: bytes, offset: int) -> MultibootHeader:
    """Decode a multiboot 2 header and its tags (MB2 3.1.2 - 3.1.13)."""
    magic, arch, length, checksum = struct.unpack_from("<4I", image, offset)
    total = (magic + arch + length + checksum) & U32
    hdr = MultibootHeader(2, offset, magic, checksum, total == 0,
                          architecture=arch, header_length=length)
    if total:
        hdr.problems.append(
            f"multiboot 2 header checksum is wrong: magic {magic:#x} + architecture"
            f" {arch} + header_length {length:#x} + checksum {checksum:#x} = {total:#x},"
            f" not 0 (the checksum should be {-(magic + arch + length) & U32:#x},"
            f" {spec.MB2_SPEC} 3.1.3)")
    if arch != spec.MB2_ARCH_I386:
        name = spec.MB2_ARCH_NAMES.get(arch, "unknown")
        hdr.problems.append(f"multiboot 2 header is for architecture {arch} ({name}),"
                            " not 0 (i386)")
    end = offset + length
    if length < spec.MB2_HEADER_FIXED_SIZE + 8 or end > len(image):
        hdr.problems.append(
            f"multiboot 2 header_length {length:#x} at file offset {offset:#x} is"
            f" impossible (at least 24 bytes, and the file ends at {len(image):#x})")
        return hdr
    if end > spec.SEARCH_LIMIT[2]:
        hdr.warnings.append(f"multiboot 2 header ends at {end:#x}, past the first"
                            f" {spec.SEARCH_LIMIT[2]} bytes where it must lie")
    pos = offset + spec.MB2_HEADER_FIXED_SIZE
    while pos + 8 <= end:
        tag_type, tag_flags, size = struct.unpack_from("<HHI", image, pos)
        if size < 8 or pos + size > end:
            hdr.problems.append(f"multiboot 2 header tag {tag_type} at file offset"
                                f" {pos:#x} has impossible size {size}")
            return hdr
        if tag_type == 0:
            return hdr
        tag = HeaderTag(tag_type, tag_flags, size, pos, bytes(image[pos + 8:pos + size]))
        hdr.tags.append(tag)
        _apply_mb2_tag(hdr, tag)
        pos += _align(size, spec.MB2_TAG_ALIGN)
    hdr.problems.append("multiboot 2 header has no end tag (type 0, size 8) within"
                        f" its header_length {length:#x}")
    return hdr


def _apply_mb2_tag(hdr: MultibootHeader, tag: HeaderTag) -> None:
    """Record what one header tag asks for; unsupported required tags are problems."""
    minimum = _MB2_TAG_MIN_SIZE.get(tag.type)
    if minimum is None:
        if tag.optional:
            hdr.warnings.append(f"unknown optional header tag type {tag.type} ignored")
        else:
            hdr.problems.append(f"multiboot 2 header requires tag type {tag.type}, which"
                                " hvdbg does not understand (and it is not optional)")
        return
    if tag.size < minimum:
        hdr.problems.append(f"multiboot 2 {tag.name} tag at file offset {tag.offset:#x}"
                            f" is {tag.size} bytes, it needs {minimum}")
        return
    words = struct.unpack_from(f"<{(tag.size - 8) // 4}I", tag.payload)
    ignored = "ignored: hvdbg starts kernels like a BIOS loader, without EFI"
    if tag.type == 1:
        _apply_info_requests(hdr, list(words), required=not tag.optional)
    elif tag.type == 2:
        hdr.address = AddressFields(*words[:4])
    elif tag.type == 3:
        hdr.entry_addr = words[0]
    elif tag.type == 4:
        hdr.console_flags = words[0]
    elif tag.type == 5:
        hdr.video = VideoRequest(*words[:3])
        hdr.warnings.append("the kernel asks for a framebuffer; hvdbg has no display"
                            " and passes none")
    elif tag.type == 6:
        hdr.module_align = True
    elif tag.type == 7:
        hdr.efi_boot_services = True
        hdr.warnings.append(f"EFI boot services tag {ignored}")
    elif tag.type == 8:
        hdr.efi_i386_entry = words[0]
        hdr.warnings.append(f"EFI i386 entry address {words[0]:#x} {ignored}")
    elif tag.type == 9:
        hdr.efi_amd64_entry = words[0]
        hdr.warnings.append(f"EFI amd64 entry address {words[0]:#x} {ignored}")
    elif tag.type == 10:
        hdr.relocatable = RelocatableRequest(*words[:4])


def _apply_info_requests(hdr: MultibootHeader, requested: list[int], required: bool) -> None:
    """MB2 3.1.4 information request: a required request hvdbg cannot satisfy is fatal."""
    hdr.info_requests.extend(requested)
    hdr.info_requests_required |= required
    for info_type in requested:
        if info_type in spec.MB2_PROVIDED_INFO_TAGS:
            continue
        name = spec.MB2_INFO_TAG_NAMES.get(info_type, "unknown")
        if required:
            hdr.problems.append(f"multiboot 2 header requires boot information tag"
                                f" {info_type} ({name}), which hvdbg does not provide")
        else:
            hdr.warnings.append(f"boot information tag {info_type} ({name}) was asked"
                                " for but hvdbg does not provide it")


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def format_header(hdr: MultibootHeader) -> list[str]:
    """Human-readable lines describing a header, for the shell and the CLI."""
    state = "valid" if hdr.checksum_valid else "WRONG"
    lines = [f"multiboot {hdr.version} header at file offset {hdr.offset:#x}"
             f" (magic {hdr.magic:#x}, checksum {hdr.checksum:#x} {state})"]
    if hdr.version == 1:
        names = ", ".join(spec.bit_names(hdr.flags, spec.MB1_HEADER_FLAG_NAMES)) or "none"
        lines.append(f"  flags {hdr.flags:#010x}: {names}")
    else:
        arch = spec.MB2_ARCH_NAMES.get(hdr.architecture or 0, "unknown")
        lines.append(f"  architecture {hdr.architecture} ({arch}),"
                     f" header_length {hdr.header_length}")
        for tag in hdr.tags:
            kind = "optional" if tag.optional else "required"
            lines.append(f"  tag {tag.type} {tag.name} ({kind}, {tag.size} bytes)")
    if hdr.address:
        a = hdr.address
        lines.append(f"  header_addr {a.header_addr:#x} load_addr {a.load_addr:#x}"
                     f" load_end_addr {a.load_end_addr:#x} bss_end_addr {a.bss_end_addr:#x}")
    if hdr.entry_addr is not None:
        lines.append(f"  entry_addr {hdr.entry_addr:#x}")
    if hdr.video:
        v = hdr.video
        mode = "" if v.mode_type is None else f" mode_type {v.mode_type}"
        lines.append(f"  video{mode} {v.width}x{v.height}x{v.depth}")
    if hdr.info_requests:
        kind = "required" if hdr.info_requests_required else "optional"
        lines.append(f"  information requested ({kind}): "
                     + ", ".join(spec.MB2_INFO_TAG_NAMES.get(t, str(t))
                                 for t in hdr.info_requests))
    if hdr.console_flags is not None:
        names = ", ".join(spec.bit_names(hdr.console_flags, spec.MB2_CONSOLE_FLAG_NAMES))
        lines.append(f"  console flags {hdr.console_flags:#x}: {names or 'none'}")
    if hdr.module_align:
        lines.append("  modules must be page aligned")
    if hdr.relocatable:
        r = hdr.relocatable
        pref = spec.MB2_RELOC_PREFERENCE_NAMES.get(r.preference, str(r.preference))
        lines.append(f"  relocatable within {r.min_addr:#x}-{r.max_addr:#x},"
                     f" align {r.align:#x}, preference {pref}")
    lines += [f"  problem: {p}" for p in hdr.problems]
    lines += [f"  warning: {w}" for w in hdr.warnings]
    return lines
