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

#define PIC_MASTER_DATA 0x21
#define PIC_SLAVE_DATA  0xa1

static inline void pic_mask_all(void)
{
    outb(PIC_SLAVE_DATA, 0xff);
    outb(PIC_MASTER_DATA, 0xff);
}

#endif
