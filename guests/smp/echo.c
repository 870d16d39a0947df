#include "echo.h"

#include "console.h"
#include "cpu.h"
#include "ioapic.h"
#include "lapic.h"

#define COM1_IOAPIC_PIN     4           /* ISA IRQ 4, identity-mapped (no MADT override) */
#define UART_RBR            0
#define UART_IER            1
#define UART_FCR            2
#define UART_MCR            4
#define UART_LSR            5
#define UART_LSR_DR         0x01
#define UART_IER_RDA        0x01
#define UART_MCR_DTR_RTS_OUT2 0x0b
#define ECHO_LINE           128
#define ECHO_RING           1024
#define ECHO_SPINS          400000000ULL  /* barrier bound while CPU N waits for input */

struct echo_state {
    volatile uint64_t interrupts;         /* VEC_UART handler invocations */
    volatile uint64_t shared __attribute__((aligned(64)));  /* lock incq: handler + spinners */
    volatile uint64_t spinner_total;
    volatile uint32_t per_apic[MAX_CPUS];
    volatile uint64_t bytes;              /* received in the handler */
    volatile char ring[ECHO_RING];        /* handler -> CPU N's loop */
    volatile uint32_t head, tail;         /* written by the handler / by the loop */
    volatile uint64_t newlines;           /* line ends the handler has put in the ring */
    volatile uint64_t dropped;            /* bytes that found the ring full */
    char line[ECHO_LINE];
    volatile bool done;
    volatile uint32_t target_apic;
    uint64_t target_cpu, lines;
    bool active;
};

static struct echo_state echo;

void echo_prepare(uint64_t target_cpu)
{
    memset((void *)&echo, 0, sizeof(echo));
    echo.target_cpu = target_cpu;
    echo.active = true;
}

bool echo_active(void)
{
    return echo.active;
}

void echo_set_cpus(struct workload *work, uint32_t ncpus)
{
    if (echo.target_cpu >= ncpus)
        echo.target_cpu = ncpus - 1;
    work->barrier_spin_limit += ECHO_SPINS;
    kprintf("echo: IRQ 4 -> I/O APIC pin %u -> CPU %lu, vector 0x%x; type lines, \"quit\" ends\n",
            COM1_IOAPIC_PIN, echo.target_cpu, VEC_UART);
}

void echo_interrupt(void)
{
    uint32_t id = lapic_id();
    if (id < MAX_CPUS)
        __atomic_fetch_add(&echo.per_apic[id], 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&echo.interrupts, 1, __ATOMIC_SEQ_CST);
    __asm__ volatile("lock incq %0" : "+m"(echo.shared) : : "memory", "cc");
    while (inb(COM1_PORT + UART_LSR) & UART_LSR_DR) {
        char c = (char)inb(COM1_PORT + UART_RBR);
        echo.bytes++;
        if (echo.head - echo.tail == ECHO_RING) {
            echo.dropped++;
            continue;
        }
        echo.ring[echo.head % ECHO_RING] = c;
        echo.head++;
        if (c == '\n')
            echo.newlines++;
    }
}

/* The next line from the ring (CPU N, interrupts off): its length. */
static uint32_t take_line(void)
{
    uint32_t len = 0;
    for (;;) {
        char c = echo.ring[echo.tail % ECHO_RING];
        echo.tail++;
        if (c == '\n')
            break;
        if (c != '\r' && len < ECHO_LINE - 1)
            echo.line[len++] = c;
    }
    echo.line[len] = 0;
    return len;
}

static bool is_quit(uint32_t len)
{
    return len == 4 && echo.line[0] == 'q' && echo.line[1] == 'u' && echo.line[2] == 'i' &&
           echo.line[3] == 't';
}

void echo_run(struct workload *work, uint32_t cpu_index)
{
    uint32_t local_sense = 0;
    bool target = cpu_index == echo.target_cpu;
    if (target)
        echo.target_apic = lapic_id();
    work_barrier(work, &local_sense, cpu_index, "start");
    if (cpu_index == 0) {
        ioapic_route(COM1_IOAPIC_PIN, echo.target_apic, VEC_UART);
        outb(COM1_PORT + UART_FCR, 0x01);  /* FIFO on, not cleared: input sent ahead stays */
        outb(COM1_PORT + UART_MCR, UART_MCR_DTR_RTS_OUT2);
        outb(COM1_PORT + UART_IER, UART_IER_RDA);
    }
    if (target) {
        __asm__ volatile("cli");
        for (;;) {
            while (echo.lines == echo.newlines)
                __asm__ volatile("sti; hlt; cli" : : : "memory");
            uint32_t len = take_line();
            kprintf("echo: %s\n", echo.line);
            echo.lines++;
            if (is_quit(len))
                break;
        }
        echo.done = true;
    } else {
        spin_with_interrupts(&echo.shared, &echo.done, &echo.spinner_total);
    }
    if (cpu_index == 0) {
        outb(COM1_PORT + UART_IER, 0);
        ioapic_write(IOAPIC_REDIR(COM1_IOAPIC_PIN), REDIR_MASKED | VEC_UART);
    }
    work_barrier(work, &local_sense, cpu_index, "end");
}

void echo_finish(uint32_t ncpus)
{
    uint32_t on_target = echo.per_apic[echo.target_apic];
    uint64_t elsewhere = echo.interrupts - on_target;
    kprintf("echo: %lu lines, %lu bytes (%lu dropped) in %u interrupts on CPU %lu (APIC id %u), "
            "%lu on the other %u CPUs\n", echo.lines, echo.bytes, echo.dropped, on_target, echo.target_cpu,
            echo.target_apic, elsewhere, ncpus - 1);
    kprintf("echo: shared counter %lu = %lu lock incq by the other CPUs + %lu by the handler\n",
            echo.shared, echo.spinner_total, echo.interrupts);
    if (on_target && elsewhere == 0 && !echo.dropped && echo.shared == echo.spinner_total + echo.interrupts) {
        kprintf("echo ok\n");
        debug_exit(EXIT_OK);
    }
    kprintf("echo FAILED\n");
    debug_exit(EXIT_ECHO_BAD);
}
