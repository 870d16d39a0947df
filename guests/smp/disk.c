#include "disk.h"

#include "console.h"
#include "ioapic.h"
#include "lapic.h"

#define ATA_DATA        0x1f0
#define ATA_ERROR       0x1f1
#define ATA_COUNT       0x1f2
#define ATA_LBA0        0x1f3
#define ATA_LBA1        0x1f4
#define ATA_LBA2        0x1f5
#define ATA_DEVICE      0x1f6
#define ATA_STATUS      0x1f7
#define ATA_CONTROL     0x3f6
#define ST_BSY          0x80
#define ST_DRQ          0x08
#define ST_ERR          0x01
#define ERR_IDNF        0x10
#define ATA_IOAPIC_PIN  14              /* ISA IRQ 14, identity-mapped */
#define PATTERN_SECTORS 4
#define POLL_LIMIT      1000000

static volatile uint64_t ata_interrupts;
static uint16_t buf[256];

static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint16_t inw(uint16_t port)
{
    uint16_t v;
    __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

void disk_interrupt(void)
{
    (void)inb(ATA_STATUS);              /* reading Status acknowledges INTRQ */
    __atomic_fetch_add(&ata_interrupts, 1, __ATOMIC_SEQ_CST);
}

static int fail(const char *what, uint8_t status)
{
    kprintf("disk FAILED: %s (status 0x%x error 0x%x)\n", what, status, inb(ATA_ERROR));
    debug_exit(EXIT_DISK_BAD);
    return 0;
}

/* Poll the alternate status until BSY clears; the status then. */
static uint8_t wait_ready(void)
{
    for (int i = 0; i < POLL_LIMIT; i++) {
        uint8_t st = inb(ATA_CONTROL);
        if (!(st & ST_BSY))
            return st;
    }
    return fail("BSY stuck", inb(ATA_CONTROL));
}

static void select_lba(uint64_t lba, uint32_t count, bool ext)
{
    if (ext) {                          /* high bytes first (the HOB), then the low ones */
        outb(ATA_COUNT, count >> 8);
        outb(ATA_LBA0, lba >> 24);
        outb(ATA_LBA1, lba >> 32);
        outb(ATA_LBA2, lba >> 40);
        outb(ATA_DEVICE, 0x40);
    } else {
        outb(ATA_DEVICE, 0xe0 | ((lba >> 24) & 0xf));
    }
    outb(ATA_COUNT, count);
    outb(ATA_LBA0, lba);
    outb(ATA_LBA1, lba >> 8);
    outb(ATA_LBA2, lba >> 16);
}

static void read_words(void)
{
    for (int i = 0; i < 256; i++)
        buf[i] = inw(ATA_DATA);
}

static uint16_t pattern(uint64_t lba, int i)
{
    return (uint16_t)(lba * 0x1021 + i * 7 + 0x5a00);
}

void disk_run(void)
{
    outb(ATA_CONTROL, 0x02);            /* nIEN: polled first */
    outb(ATA_DEVICE, 0xa0);
    outb(ATA_STATUS, 0xec);             /* IDENTIFY DEVICE */
    uint8_t st = wait_ready();
    if (!(st & ST_DRQ) || (st & ST_ERR))
        fail("IDENTIFY", st);
    read_words();
    char model[41];
    for (int i = 0; i < 20; i++) {
        model[2 * i] = (char)(buf[27 + i] >> 8);
        model[2 * i + 1] = (char)buf[27 + i];
    }
    model[40] = 0;
    for (int i = 39; i >= 0 && model[i] == ' '; i--)
        model[i] = 0;
    uint64_t sectors = (uint64_t)buf[100] | (uint64_t)buf[101] << 16 | (uint64_t)buf[102] << 32 |
                       (uint64_t)buf[103] << 48;
    kprintf("disk: model '%s', %lu sectors, LBA48 %s\n", model, sectors, buf[83] & (1 << 10) ? "yes" : "no");

    select_lba(0, 1, false);
    outb(ATA_STATUS, 0x20);             /* READ SECTORS */
    st = wait_ready();
    if (!(st & ST_DRQ))
        fail("READ SECTORS 0", st);
    read_words();
    char text[65];
    for (int i = 0; i < 64; i++)
        text[i] = (char)(buf[i / 2] >> (8 * (i & 1)));
    text[64] = 0;
    kprintf("disk: sector 0: '%s'\n", text);

    /* the writes complete through IRQ 14: the I/O APIC routes it to this CPU */
    ioapic_route(ATA_IOAPIC_PIN, lapic_id(), VEC_ATA);
    outb(ATA_CONTROL, 0x00);
    select_lba(1, PATTERN_SECTORS, true);
    outb(ATA_STATUS, 0x34);             /* WRITE SECTORS EXT */
    for (uint64_t lba = 1; lba <= PATTERN_SECTORS; lba++) {
        st = wait_ready();
        if (!(st & ST_DRQ))
            fail("WRITE SECTORS EXT: no DRQ", st);
        uint64_t before = ata_interrupts;
        for (int i = 0; i < 256; i++)
            outw(ATA_DATA, pattern(lba, i));
        __asm__ volatile("cli");
        while (ata_interrupts == before)
            __asm__ volatile("sti; hlt; cli" : : : "memory");
        __asm__ volatile("sti");
    }
    outb(ATA_CONTROL, 0x02);
    ioapic_write(IOAPIC_REDIR(ATA_IOAPIC_PIN), REDIR_MASKED | VEC_ATA);
    outb(ATA_STATUS, 0xea);             /* FLUSH CACHE EXT */
    st = wait_ready();
    if (st & ST_ERR)
        fail("FLUSH CACHE EXT", st);

    select_lba(1, PATTERN_SECTORS, false);
    outb(ATA_STATUS, 0x20);
    uint64_t mismatches = 0;
    for (uint64_t lba = 1; lba <= PATTERN_SECTORS; lba++) {
        st = wait_ready();
        if (!(st & ST_DRQ))
            fail("READ SECTORS 1-4", st);
        read_words();
        for (int i = 0; i < 256; i++)
            mismatches += buf[i] != pattern(lba, i);
    }
    select_lba(sectors, 1, false);
    outb(ATA_STATUS, 0x20);
    st = wait_ready();
    uint8_t err = inb(ATA_ERROR);
    kprintf("disk: %d sectors written with %lu interrupts, read back with %lu mismatched words; "
            "read past the end: status 0x%x error 0x%x\n", PATTERN_SECTORS, ata_interrupts, mismatches, st, err);
    if (mismatches || ata_interrupts != PATTERN_SECTORS || !(st & ST_ERR) || !(err & ERR_IDNF))
        fail("checks", st);
    kprintf("disk ok\n");
    debug_exit(EXIT_OK);
}
