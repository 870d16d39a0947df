/* The I/O APIC's indirect register window (82093AA: IOREGSEL at 0x00, IOWIN at 0x10),
 * mapped at IOAPIC_PHYS by boot.S. */
#ifndef HVDBG_GUEST_IOAPIC_H
#define HVDBG_GUEST_IOAPIC_H

#include "layout.h"
#include "cpu.h"

#define IOAPIC_IOREGSEL     0x00
#define IOAPIC_IOWIN        0x10
#define IOAPIC_REDIR(pin)   (0x10 + 2 * (pin))   /* low dword; the destination is at + 1 */
#define REDIR_MASKED        (1U << 16)

static inline void ioapic_write(uint32_t reg, uint32_t value)
{
    *(volatile uint32_t *)(IOAPIC_PHYS + IOAPIC_IOREGSEL) = reg;
    *(volatile uint32_t *)(IOAPIC_PHYS + IOAPIC_IOWIN) = value;
}

/* Route ISA IRQ `pin` (no override: GSI = IRQ) to APIC ID `apic` with `vector`: fixed,
 * physical, edge, active high, unmasked. */
static inline void ioapic_route(uint32_t pin, uint32_t apic, uint32_t vector)
{
    ioapic_write(IOAPIC_REDIR(pin) + 1, apic << 24);
    ioapic_write(IOAPIC_REDIR(pin), vector);
}

/* Mask `pin` again. */
static inline void ioapic_mask(uint32_t pin) { ioapic_write(IOAPIC_REDIR(pin), REDIR_MASKED); }

#endif
