#include "bootinfo.h"

#define MBI_FLAG_MEM     (1u << 0)
#define MBI_FLAG_CMDLINE (1u << 2)

struct __attribute__((packed)) multiboot_info {
    uint32_t flags;
    uint32_t mem_lower;
    uint32_t mem_upper;
    uint32_t boot_device;
    uint32_t cmdline;
    /* further fields are not used */
};

static bool word_is(const char *word, uint64_t len, const char *name)
{
    return strlen(name) == len && memcmp(word, name, len) == 0;
}

/* Parse a decimal number; false if empty or not all digits. */
static bool parse_u64(const char *s, uint64_t len, uint64_t *out)
{
    uint64_t value = 0;
    if (len == 0)
        return false;
    for (uint64_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        value = value * 10 + (uint64_t)(s[i] - '0');
    }
    *out = value;
    return true;
}

static void apply_option(const char *word, uint64_t len, struct boot_options *opt)
{
    const char *eq = NULL;
    for (uint64_t i = 0; i < len; i++) {
        if (word[i] == '=') {
            eq = &word[i];
            break;
        }
    }
    uint64_t key_len = eq ? (uint64_t)(eq - word) : len;
    const char *value = eq ? eq + 1 : NULL;
    uint64_t value_len = eq ? len - key_len - 1 : 0;
    uint64_t number;

    if (!eq && word_is(word, key_len, "selftest"))
        opt->selftest = true;
    else if (eq && word_is(word, key_len, "work_mib") && parse_u64(value, value_len, &number) && number)
        opt->work_entries = number * (1024 * 1024 / sizeof(uint64_t));
    else if (eq && word_is(word, key_len, "ap_wait") && parse_u64(value, value_len, &number) && number)
        opt->ap_wait_loops = number;
    else if (eq && word_is(word, key_len, "max_aps") && parse_u64(value, value_len, &number))
        opt->max_aps = number;
    else if (eq && word_is(word, key_len, "workload") && word_is(value, value_len, "lock"))
        opt->workload = WORKLOAD_LOCK;
    else if (eq && word_is(word, key_len, "workload") && word_is(value, value_len, "atomics"))
        opt->workload = WORKLOAD_ATOMICS;
    else if (eq && word_is(word, key_len, "workload") && word_is(value, value_len, "sum"))
        opt->workload = WORKLOAD_SUM;
    else if (eq && word_is(word, key_len, "workload") && word_is(value, value_len, "pit"))
        opt->workload = WORKLOAD_PIT;
    else if (eq && word_is(word, key_len, "pci_scan") && parse_u64(value, value_len, &number))
        opt->pci_scan = number != 0;
    else if (eq && word_is(word, key_len, "workload") && word_is(value, value_len, "disk"))
        opt->workload = WORKLOAD_DISK;
    else if (eq && word_is(word, key_len, "workload") && word_is(value, value_len, "echo"))
        opt->workload = WORKLOAD_ECHO;
    else if (eq && word_is(word, key_len, "workload") && word_is(value, value_len, "vmx"))
        opt->workload = WORKLOAD_VMX;
    else if (eq && word_is(word, key_len, "echo_cpu") && parse_u64(value, value_len, &number))
        opt->echo_cpu = number;
    else if (eq && word_is(word, key_len, "pit_cpu") && parse_u64(value, value_len, &number))
        opt->pit_cpu = number;
    else if (eq && word_is(word, key_len, "pit_ticks") && parse_u64(value, value_len, &number) && number)
        opt->pit_ticks = number;
    else if (eq && word_is(word, key_len, "pit_via") && word_is(value, value_len, "pic"))
        opt->pit_pic = true;
    else if (eq && word_is(word, key_len, "rtc_ticks") && parse_u64(value, value_len, &number))
        opt->rtc_ticks = number;
    else if (eq && word_is(word, key_len, "rtc_via") && word_is(value, value_len, "pic"))
        opt->rtc_pic = true;
    else if (eq && word_is(word, key_len, "lock") && word_is(value, value_len, "tas"))
        opt->lock_tas = true;
    else if (eq && word_is(word, key_len, "lock") && word_is(value, value_len, "ticket"))
        opt->lock_tas = false;
    else if (eq && word_is(word, key_len, "lock_iters") && parse_u64(value, value_len, &number))
        opt->lock_iters = number;
    else if (eq && word_is(word, key_len, "lock_inside") && parse_u64(value, value_len, &number))
        opt->lock_inside = number;
    else if (eq && word_is(word, key_len, "lock_outside") && parse_u64(value, value_len, &number))
        opt->lock_outside = number;
    else if (eq && word_is(word, key_len, "atomic_iters") && parse_u64(value, value_len, &number))
        opt->atomic_iters = number;
    else if (eq && word_is(word, key_len, "sipi_vector") && parse_u64(value, value_len, &number) &&
             (number == 0 || number == TRAMPOLINE_VECTOR))
        opt->trampoline_phys = (uint32_t)(number << 12);
}

static void parse_cmdline(struct boot_options *opt)
{
    const char *s = opt->cmdline;
    while (*s) {
        while (*s == ' ')
            s++;
        const char *start = s;
        while (*s && *s != ' ')
            s++;
        if (s > start)
            apply_option(start, (uint64_t)(s - start), opt);
    }
}

void bootinfo_parse(uint32_t magic, uint32_t info_phys, struct boot_options *out)
{
    const struct multiboot_info *info = phys_to_virt(info_phys);
    memset(out, 0, sizeof(*out));
    out->magic = magic;
    out->work_entries = DEFAULT_WORK_ENTRIES;
    out->ap_wait_loops = DEFAULT_AP_WAIT_LOOPS;
    out->max_aps = UINT64_MAX;
    out->lock_iters = DEFAULT_LOCK_ITERS;
    out->lock_inside = DEFAULT_LOCK_INSIDE;
    out->lock_outside = DEFAULT_LOCK_OUTSIDE;
    out->atomic_iters = DEFAULT_ATOMIC_ITERS;
    out->pit_cpu = MAX_CPUS;      /* the last CPU online */
    out->trampoline_phys = TRAMPOLINE_PHYS;
    if (info->flags & MBI_FLAG_MEM) {
        out->have_mem = true;
        out->mem_lower_kib = info->mem_lower;
        out->mem_upper_kib = info->mem_upper;
    }
    if ((info->flags & MBI_FLAG_CMDLINE) && info->cmdline && info->cmdline < BOOT_MAP_SIZE) {
        const char *src = phys_to_virt(info->cmdline);
        uint64_t i = 0;
        for (; i < CMDLINE_MAX - 1 && src[i]; i++)
            out->cmdline[i] = src[i];
        out->cmdline[i] = '\0';
    }
    parse_cmdline(out);
}
