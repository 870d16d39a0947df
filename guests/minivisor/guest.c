/*
 * The guest: its memory (GPA -> HPA = GPA + EPT_OFFSET, identity-mapped in the host), the
 * multiboot 1 load of module 0 (Multiboot Specification 0.6.96, 3.2 "Machine state",
 * 3.3 "Boot information format"), the entry state of its BSP (32-bit protected mode,
 * paging off) and of an AP after SIPI (real mode, SDM Vol. 3A 9.1.1 Table 9-1 / 9.4.4),
 * and a walk of its page tables (SDM Vol. 3A 4.5 "4-Level Paging").
 */
#include "vmx.h"

#define ELF_MAGIC           "\177ELF"
#define ELFCLASS32          1
#define ELFCLASS64          2
#define EM_386              3
#define EM_X86_64           62
#define PT_LOAD             1
#define MB1_SEARCH          8192
#define PAGE_4K             0x1000UL

/* Multiboot information flags (spec 3.3). */
#define MBI_MEM             (1u << 0)
#define MBI_CMDLINE         (1u << 2)
#define MBI_MODS            (1u << 3)
#define MBI_MMAP            (1u << 6)
#define MBI_LOADER_NAME     (1u << 9)
#define MMAP_AVAILABLE      1
#define MMAP_RESERVED       2

/* Offsets inside the guest's boot-information page. */
#define INFO_MMAP           0x080
#define INFO_LOADER_NAME    0x100
#define INFO_GDT            0x120
#define INFO_CMDLINE        0x200
#define INFO_END            (INFO_CMDLINE + GUEST_CMDLINE_MAX)

/* Guest GDT (multiboot leaves the GDTR to the OS; GRUB's selectors): */
#define GUEST_SEL_CODE32    0x10
#define GUEST_SEL_DATA      0x18

struct guest_image guest;

struct __attribute__((packed)) elf64_ehdr {
    uint8_t e_ident[16];
    uint16_t e_type, e_machine;
    uint32_t e_version;
    uint64_t e_entry, e_phoff, e_shoff;
    uint32_t e_flags;
    uint16_t e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx;
};

struct __attribute__((packed)) elf64_phdr {
    uint32_t p_type, p_flags;
    uint64_t p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align;
};

struct __attribute__((packed)) elf32_ehdr {
    uint8_t e_ident[16];
    uint16_t e_type, e_machine;
    uint32_t e_version, e_entry, e_phoff, e_shoff, e_flags;
    uint16_t e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx;
};

struct __attribute__((packed)) elf32_phdr {
    uint32_t p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align;
};

struct __attribute__((packed)) mb_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr, drives_length, drives_addr, config_table, boot_loader_name, apm_table;
    uint32_t vbe_control_info, vbe_mode_info;
    uint16_t vbe_mode, vbe_interface_seg, vbe_interface_off, vbe_interface_len;
    uint64_t framebuffer_addr;
    uint32_t framebuffer_pitch, framebuffer_width, framebuffer_height;
    uint8_t framebuffer_bpp, framebuffer_type, color_info[6];
};

struct __attribute__((packed)) mb_mmap_entry {
    uint32_t size;              /* of the rest of the entry: 20 */
    uint64_t addr, len;
    uint32_t type;
};

struct segment {
    uint64_t offset, vaddr, paddr, filesz, memsz;
};

void *gpa_to_hva(uint64_t gpa)
{
    return phys_ptr(gpa + EPT_OFFSET);
}

/* The guest can reach [gpa, gpa + len) through the EPT. */
bool gpa_mapped(uint64_t gpa, uint64_t len)
{
    return gpa < EPT_MAPPED_MEM && len <= EPT_MAPPED_MEM - gpa;
}

/* The guest RAM the hypervisor believes the guest has (what it tells the guest). */
static bool gpa_in_ram(uint64_t gpa, uint64_t len)
{
    return gpa < GUEST_MEM && len <= GUEST_MEM - gpa;
}

static void find_multiboot_header(const uint8_t *image, uint64_t size)
{
    uint64_t limit = size < MB1_SEARCH ? size : MB1_SEARCH;
    for (uint64_t off = 0; off + 12 <= limit; off += 4) {
        uint32_t w[3];
        memcpy(w, image + off, sizeof(w));
        if (w[0] == MB1_HEADER_MAGIC && (uint32_t)(w[0] + w[1] + w[2]) == 0) {
            mv_log("guest: multiboot 1 header at file offset 0x%lx, flags 0x%x%s\n", off, w[1],
                   (w[1] & (1u << 2)) ? " (video mode requested: not provided)" : "");
            return;
        }
    }
    mv_log("guest: warning: no multiboot 1 header in the first %u bytes: loading it anyway\n", MB1_SEARCH);
}

/* The PT_LOAD segments of a 32- or 64-bit ELF; false (printed) if it is not one. */
static bool elf_segments(const uint8_t *image, uint64_t size, struct segment *segs, uint32_t max, uint32_t *count,
                         uint64_t *entry)
{
    if (size < sizeof(struct elf32_ehdr) || memcmp(image, ELF_MAGIC, 4) != 0) {
        mv_log("guest: module 0 is not an ELF file\n");
        return false;
    }
    uint8_t elf_class = image[4];
    *count = 0;
    if (elf_class == ELFCLASS64 && size >= sizeof(struct elf64_ehdr)) {
        const struct elf64_ehdr *eh = (const void *)image;
        if (eh->e_machine != EM_X86_64 || eh->e_phentsize != sizeof(struct elf64_phdr)
            || eh->e_phoff + (uint64_t)eh->e_phnum * sizeof(struct elf64_phdr) > size) {
            mv_log("guest: bad ELF64 header (machine %u, %u program headers)\n", eh->e_machine, eh->e_phnum);
            return false;
        }
        *entry = eh->e_entry;
        for (uint32_t i = 0; i < eh->e_phnum; i++) {
            const struct elf64_phdr *ph = (const void *)(image + eh->e_phoff + i * sizeof(*ph));
            if (ph->p_type != PT_LOAD || ph->p_memsz == 0)
                continue;
            if (*count >= max)
                return false;
            segs[(*count)++] = (struct segment){ ph->p_offset, ph->p_vaddr, ph->p_paddr, ph->p_filesz, ph->p_memsz };
        }
    } else if (elf_class == ELFCLASS32) {
        const struct elf32_ehdr *eh = (const void *)image;
        if (eh->e_machine != EM_386 || eh->e_phentsize != sizeof(struct elf32_phdr)
            || eh->e_phoff + (uint64_t)eh->e_phnum * sizeof(struct elf32_phdr) > size) {
            mv_log("guest: bad ELF32 header (machine %u, %u program headers)\n", eh->e_machine, eh->e_phnum);
            return false;
        }
        *entry = eh->e_entry;
        for (uint32_t i = 0; i < eh->e_phnum; i++) {
            const struct elf32_phdr *ph = (const void *)(image + eh->e_phoff + i * sizeof(*ph));
            if (ph->p_type != PT_LOAD || ph->p_memsz == 0)
                continue;
            if (*count >= max)
                return false;
            segs[(*count)++] = (struct segment){ ph->p_offset, ph->p_vaddr, ph->p_paddr, ph->p_filesz, ph->p_memsz };
        }
    } else {
        mv_log("guest: unsupported ELF class %u\n", elf_class);
        return false;
    }
    return *count > 0;
}

/* The multiboot information, the guest's GDT and its command line, in one page. */
static void build_boot_info(uint64_t info_gpa)
{
    uint8_t *page = gpa_to_hva(info_gpa);
    memset(page, 0, PAGE_4K);

    struct mb_mmap_entry *mmap = (void *)(page + INFO_MMAP);
    mmap[0] = (struct mb_mmap_entry){ 20, 0, 0x9fc00, MMAP_AVAILABLE };
    mmap[1] = (struct mb_mmap_entry){ 20, 0x9fc00, 0x400, MMAP_RESERVED };
    mmap[2] = (struct mb_mmap_entry){ 20, 0xe0000, 0x20000, MMAP_RESERVED };   /* ACPI tables */
    mmap[3] = (struct mb_mmap_entry){ 20, 0x100000, GUEST_MEM - 0x100000, MMAP_AVAILABLE };

    memcpy(page + INFO_LOADER_NAME, "minivisor", 10);

    uint64_t *gdt = (void *)(page + INFO_GDT);
    gdt[0] = 0;
    gdt[1] = 0;
    gdt[GUEST_SEL_CODE32 >> 3] = 0x00cf9b000000ffffUL;     /* flat 4 GiB, execute/read, accessed */
    gdt[GUEST_SEL_DATA >> 3] = 0x00cf93000000ffffUL;       /* flat 4 GiB, read/write, accessed */

    size_t len = strlen(opt.guest_cmdline);
    memcpy(page + INFO_CMDLINE, opt.guest_cmdline, len + 1);

    struct mb_info *mbi = (void *)page;
    mbi->flags = MBI_MEM | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_LOADER_NAME;
    mbi->mem_lower = 0x9fc00 / 1024;
    mbi->mem_upper = (uint32_t)((GUEST_MEM - 0x100000) / 1024);
    mbi->cmdline = (uint32_t)(info_gpa + INFO_CMDLINE);
    mbi->mods_count = 0;
    mbi->mods_addr = (uint32_t)(info_gpa + INFO_END);
    mbi->mmap_length = 4 * sizeof(struct mb_mmap_entry);
    mbi->mmap_addr = (uint32_t)(info_gpa + INFO_MMAP);
    mbi->boot_loader_name = (uint32_t)(info_gpa + INFO_LOADER_NAME);
}

bool guest_load(const uint8_t *module, uint64_t size)
{
    struct segment segs[16];
    uint32_t count;
    uint64_t entry;

    find_multiboot_header(module, size);
    if (!elf_segments(module, size, segs, 16, &count, &entry))
        return false;

    /* Low memory first: the real-mode area, zeroed (EBDA pointer 0), then the ACPI tables. */
    memset(gpa_to_hva(0), 0, 0x100000);
    acpi_build_guest();

    uint64_t image_end = 0;
    bool entry_phys = false;
    uint64_t entry_from_virt = 0;
    for (uint32_t i = 0; i < count; i++) {
        const struct segment *s = &segs[i];
        if (s->filesz > s->memsz || s->offset > size || s->filesz > size - s->offset) {
            mv_log("guest: segment %u: file part 0x%lx+0x%lx outside the module\n", i, s->offset, s->filesz);
            return false;
        }
        if (s->paddr < 0x100000 || !gpa_in_ram(s->paddr, s->memsz)) {
            mv_log("guest: segment %u at GPA 0x%lx-0x%lx is not inside guest RAM 1 MiB-%lu MiB\n", i, s->paddr,
                   s->paddr + s->memsz, GUEST_MEM / MIB);
            return false;
        }
        memcpy(gpa_to_hva(s->paddr), module + s->offset, s->filesz);
        memset((uint8_t *)gpa_to_hva(s->paddr) + s->filesz, 0, s->memsz - s->filesz);
        mv_log("guest: segment %u: GPA 0x%lx-0x%lx (file 0x%lx bytes, vaddr 0x%lx)\n", i, s->paddr,
               s->paddr + s->memsz, s->filesz, s->vaddr);
        if (s->paddr + s->memsz > image_end)
            image_end = s->paddr + s->memsz;
        if (entry >= s->paddr && entry < s->paddr + s->memsz)
            entry_phys = true;
        else if (entry >= s->vaddr && entry < s->vaddr + s->memsz)
            entry_from_virt = entry - s->vaddr + s->paddr;
    }
    /* e_entry is physical for the SMP kernel; a kernel linked with e_entry virtual gets
     * it translated through its segment, as GRUB does. */
    if (!entry_phys) {
        if (!entry_from_virt) {
            mv_log("guest: entry 0x%lx is in no loaded segment\n", entry);
            return false;
        }
        entry = entry_from_virt;
    }

    uint64_t info_gpa = (image_end + PAGE_4K - 1) & ~(PAGE_4K - 1);
    if (!gpa_in_ram(info_gpa, PAGE_4K)) {
        mv_log("guest: no room for the boot information at 0x%lx\n", info_gpa);
        return false;
    }
    build_boot_info(info_gpa);

    guest.entry = entry;
    guest.image_end = image_end;
    guest.info_gpa = info_gpa;
    mv_log("guest loaded entry=0x%lx: image end 0x%lx, multiboot info 0x%lx (mem_upper %lu KiB), cmdline '%s'\n",
           entry, image_end, info_gpa, (GUEST_MEM - 0x100000) / 1024, opt.guest_cmdline);
    return true;
}

void guest_bsp_entry(struct guest_entry *g)
{
    memset(g, 0, sizeof(*g));
    /* Multiboot 3.2: CR0.PE = 1, PG = 0; flat 4 GiB segments; EFLAGS.IF = 0, VM = 0. */
    g->cr0 = CR0_PE | CR0_ET | CR0_NE;
    g->rip = guest.entry;
    g->rflags = 0x2;
    g->cs = (struct guest_segment){ GUEST_SEL_CODE32, 0, 0xffffffff, 0xc09b };
    struct guest_segment data = { GUEST_SEL_DATA, 0, 0xffffffff, 0xc093 };
    g->ss = g->ds = g->es = g->fs = g->gs = data;
    g->ldtr = (struct guest_segment){ 0, 0, 0, AR_UNUSABLE };
    /* No TSS exists; VM entry still wants a present busy TSS in TR (SDM 27.3.1.2). */
    g->tr = (struct guest_segment){ 0, 0, 0x67, 0x8b };
    g->gdtr_base = guest.info_gpa + INFO_GDT;
    g->gdtr_limit = 4 * 8 - 1;
    g->idtr_base = 0;
    g->idtr_limit = 0;
#ifdef BUG_MAGIC
    g->regs.gpr[GPR_RAX] = MB1_HEADER_MAGIC;    /* the header's magic, not the bootloader's */
#else
    g->regs.gpr[GPR_RAX] = MB1_BOOT_MAGIC;
#endif
    g->regs.gpr[GPR_RBX] = guest.info_gpa;
}

void guest_sipi_entry(struct guest_entry *g, uint64_t entry)
{
    memset(g, 0, sizeof(*g));
    /* After INIT + SIPI (SDM Vol. 3A Table 9-1; 9.4.4): real mode, CS:IP = (entry >> 4):0,
     * CS base = entry, limits 0xFFFF, EDX = the processor signature.  CR0 = ET here; the
     * hypervisor adds CR0.NE (fixed in VMX operation) behind the read shadow. */
    g->cr0 = CR0_ET;
    g->rip = 0;
    g->rflags = 0x2;
    g->cs = (struct guest_segment){ (uint16_t)(entry >> 4), entry, 0xffff, 0x9b };
    struct guest_segment data = { 0, 0, 0xffff, 0x93 };
    g->ss = g->ds = g->es = g->fs = g->gs = data;
    g->ldtr = (struct guest_segment){ 0, 0, 0xffff, 0x82 };
    g->tr = (struct guest_segment){ 0, 0, 0xffff, 0x8b };
    g->gdtr_limit = 0xffff;
    g->idtr_limit = 0xffff;
    g->regs.gpr[GPR_RDX] = cpuid(1, 0).eax;
}

/*
 * Translate a guest linear address with the guest's paging (CR0.PG = 0: identity;
 * 4-level paging: a walk of its tables in guest memory).  With print_walk, each entry
 * is logged (the #PF / triple-fault diagnosis).
 */
bool guest_linear_to_gpa(struct cpu *c, uint64_t linear, uint64_t *gpa, bool print_walk)
{
    static const char *const level_names[4] = { "PML4E", "PDPTE", "PDE", "PTE" };
    uint64_t efer = vmcs_get(c, GUEST_IA32_EFER);
    if (!(efer & EFER_LMA)) {
        uint64_t cr0 = vmcs_get(c, GUEST_CR0);
        if (!(cr0 & CR0_PG)) {
            *gpa = linear & 0xffffffffUL;
            return true;
        }
        if (print_walk)
            mv_log("  guest paging mode (CR0 0x%lx CR4 0x%lx EFER 0x%lx) is not 4-level: not walked\n", cr0,
                   vmcs_get(c, GUEST_CR4), efer);
        return false;
    }
    /* EFER.LMA = 1: CR0.PG = 1 and CR4.PAE = 1 (SDM Vol. 3A 10.8.5); 4-level unless LA57. */
    uint64_t cr4 = vmcs_get(c, GUEST_CR4);
    if (cr4 & (1UL << 12)) {
        if (print_walk)
            mv_log("  guest uses 5-level paging (CR4.LA57): not walked\n");
        return false;
    }
    uint64_t table = vmcs_get(c, GUEST_CR3) & 0x000ffffffffff000UL;
    for (unsigned level = 0; level < 4; level++) {
        unsigned shift = 39 - 9 * level;
        unsigned index = (unsigned)((linear >> shift) & 511);
        uint64_t entry_gpa = table + index * 8;
        if (!gpa_mapped(entry_gpa, 8)) {
            if (print_walk)
                mv_log("  %s[%u] at GPA 0x%lx: outside the guest RAM the EPT maps\n", level_names[level], index,
                       entry_gpa);
            return false;
        }
        uint64_t e = *(volatile uint64_t *)gpa_to_hva(entry_gpa);
        if (print_walk)
            mv_log("  %s[%3u] @GPA 0x%lx = 0x%016lx%s\n", level_names[level], index, entry_gpa, e,
                   (e & 1) ? "" : "  not present");
        if (!(e & 1))
            return false;
        if ((level == 1 || level == 2) && (e & (1UL << 7))) {
            uint64_t page = 1UL << shift;
            *gpa = (e & 0x000ffffffffff000UL & ~(page - 1)) | (linear & (page - 1));
            return true;
        }
        table = e & 0x000ffffffffff000UL;
    }
    *gpa = table | (linear & 0xfff);
    return true;
}

/* Copy up to `len` bytes at a guest linear address; returns how many could be read. */
uint32_t guest_read_linear(struct cpu *c, uint64_t linear, uint8_t *out, uint32_t len)
{
    uint32_t done = 0;
    while (done < len) {
        uint64_t gpa;
        if (!guest_linear_to_gpa(c, linear + done, &gpa, false))
            break;
        uint32_t in_page = (uint32_t)(PAGE_4K - ((linear + done) & (PAGE_4K - 1)));
        uint32_t chunk = len - done < in_page ? len - done : in_page;
        if (!gpa_mapped(gpa, chunk))
            break;
        memcpy(out + done, gpa_to_hva(gpa), chunk);
        done += chunk;
    }
    return done;
}
