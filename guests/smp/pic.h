#ifndef HVDBG_GUEST_PIC_H
#define HVDBG_GUEST_PIC_H
/*
 * The legacy 8259A interrupt controllers: this kernel takes interrupts through the
 * local APIC and the I/O APIC only, so both PICs are masked (OCW1, all ones) before
 * the local APIC masks LINT0. A BIOS (SeaBIOS under QEMU) leaves the PIT's IRQ 0
 * unmasked on the master PIC; if its ExtINT request is still raised when LINT0 is
 * masked, QEMU keeps the CPU's interrupt request pending and delivers it at the
 * first STI with no vector (vector 0xffffffff: a #GP, error 0xfffffff2). Masking the
 * PIC while LINT0 still passes ExtINT withdraws the request.
 */
#include "cpu.h"

#define PIC_MASTER_CMD  0x20
#define PIC_MASTER_DATA 0x21
#define PIC_SLAVE_CMD   0xa0
#define PIC_SLAVE_DATA  0xa1

static inline void pic_mask_all(void)
{
    outb(PIC_SLAVE_DATA, 0xff);
    outb(PIC_MASTER_DATA, 0xff);
}

/*
 * Initialize both 8259As (ICW1-ICW4: edge-triggered, cascaded, 8086 mode) with the
 * master's vectors at `master_base` and the slave's at `slave_base`, then unmask the
 * master's inputs of `master_unmasked` (the slave stays masked).
 */
static inline void pic_init(uint8_t master_base, uint8_t slave_base, uint8_t master_unmasked)
{
    outb(PIC_MASTER_CMD, 0x11);
    outb(PIC_MASTER_DATA, master_base);
    outb(PIC_MASTER_DATA, 0x04);        /* the slave on IR2 */
    outb(PIC_MASTER_DATA, 0x01);
    outb(PIC_SLAVE_CMD, 0x11);
    outb(PIC_SLAVE_DATA, slave_base);
    outb(PIC_SLAVE_DATA, 0x02);         /* its cascade identity */
    outb(PIC_SLAVE_DATA, 0x01);
    outb(PIC_SLAVE_DATA, 0xff);
    outb(PIC_MASTER_DATA, (uint8_t)~master_unmasked);
}

/* Non-specific EOI to the master (OCW2). */
static inline void pic_eoi(void) { outb(PIC_MASTER_CMD, 0x20); }

#endif
