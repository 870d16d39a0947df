/*
 * ATA disk workload (`workload=disk`), on the BSP: IDENTIFY DEVICE on the primary
 * channel (model, LBA48 size), READ SECTORS of sector 0 (printed as text up to the first
 * NUL), WRITE SECTORS EXT of a pattern to sectors 1-4 waiting for IRQ 14 through I/O APIC
 * pin 14 after each sector, FLUSH CACHE EXT, READ SECTORS of 1-4 compared word by word,
 * and a read past the last sector, which must abort with IDNF.  Prints "disk ok".
 */
#ifndef HVDBG_GUEST_DISK_H
#define HVDBG_GUEST_DISK_H

#include "cpu.h"

/* The VEC_ATA handler (trap.c): acknowledge and count; the caller sends the EOI. */
void disk_interrupt(void);
/* Run the checks and leave through the debug-exit port. */
void disk_run(void);

#endif
