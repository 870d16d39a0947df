#include "rtc.h"

#include "console.h"
#include "cpu.h"
#include "ioapic.h"
#include "lapic.h"
#include "layout.h"
#include "pic.h"

#define CMOS_INDEX      0x70
#define CMOS_DATA       0x71
#define RTC_REG_A       0x0a
#define RTC_REG_B       0x0b
#define RTC_REG_C       0x0c
#define RTC_PIE         0x40
#define RTC_PF          0x40
#define RTC_1024HZ      0x26            /* DV = 010 (32.768 kHz), RS = 6 */
#define RTC_IOAPIC_PIN  8
#define RTC_PERIOD_PS   976562500ULL    /* 1/1024 s in picoseconds (the TSC counts at 1 GHz) */
#define RTC_SPIN_LIMIT  200000000ULL

static struct {
    volatile uint64_t ticks, without_pf, first_tsc, last_tsc;
    bool via_pic;
} rtc;

static inline uint64_t rtc_rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}

static uint8_t cmos_read(uint8_t reg)
{
    outb(CMOS_INDEX, reg);
    return inb(CMOS_DATA);
}

static void cmos_write(uint8_t reg, uint8_t value)
{
    outb(CMOS_INDEX, reg);
    outb(CMOS_DATA, value);
}

void rtc_interrupt(void)
{
    uint64_t now = rtc_rdtsc();
    if (!(cmos_read(RTC_REG_C) & RTC_PF)) {
        rtc.without_pf++;       /* an edge latched before the clearing read of register C */
    } else {
        if (rtc.ticks++ == 0)
            rtc.first_tsc = now;
        rtc.last_tsc = now;
    }
    if (rtc.via_pic) {
        outb(PIC_SLAVE_CMD, 0x20);      /* EOI to the slave, then to the master (IR2) */
        pic_eoi();
    } else {
        lapic_eoi();
    }
}

void rtc_check(uint64_t ticks, bool via_pic)
{
    rtc.via_pic = via_pic;
    cmos_write(RTC_REG_A, RTC_1024HZ);
    cmos_write(RTC_REG_B, cmos_read(RTC_REG_B) | RTC_PIE);
    if (via_pic) {
        pic_init(VEC_PIC_BASE, VEC_PIC_BASE + 8, 1u << 2);  /* the cascade only */
        outb(PIC_SLAVE_DATA, 0xfe);                        /* IR0: the RTC */
        lapic_write(LAPIC_LVT_LINT0, LVT_DELIVERY_EXTINT);
    } else {
        ioapic_route(RTC_IOAPIC_PIN, lapic_id(), VEC_RTC);
    }
    (void)cmos_read(RTC_REG_C);   /* IRQ 8 low again: the next period raises it (an edge) */
    __asm__ volatile("cli");
    for (uint64_t spins = 0; rtc.ticks < ticks && spins < RTC_SPIN_LIMIT; spins++)
        __asm__ volatile("sti; hlt; cli" : : : "memory");
    cmos_write(RTC_REG_B, cmos_read(RTC_REG_B) & ~RTC_PIE);
    (void)cmos_read(RTC_REG_C);
    if (via_pic) {
        pic_mask_all();
        lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
    } else {
        ioapic_mask(RTC_IOAPIC_PIN);
    }
    uint64_t span_ps = (rtc.last_tsc - rtc.first_tsc) * 1000ULL;
    uint64_t periods = (span_ps + RTC_PERIOD_PS / 2) / RTC_PERIOD_PS;
    uint64_t expected = periods * RTC_PERIOD_PS;
    uint64_t off = span_ps > expected ? span_ps - expected : expected - span_ps;
    kprintf("rtc: %lu periodic interrupts through %s, %lu without PF; %lu TSC cycles from the first "
            "to the last = %lu periods of 976562 ns\n", rtc.ticks, via_pic ? "the 8259A (IRQ 8)" : "I/O APIC pin 8",
            rtc.without_pf, rtc.last_tsc - rtc.first_tsc, periods);
    if (rtc.ticks >= ticks && rtc.without_pf <= 1 && periods >= ticks - 1 && off * 100 <= RTC_PERIOD_PS) {
        kprintf("rtc ok\n");
        return;
    }
    kprintf("rtc FAILED\n");
    debug_exit(EXIT_RTC_BAD);
}
