#include "pci.h"

#include "console.h"
#include "cpu.h"

#define PCI_CONFIG_ADDRESS 0xcf8
#define PCI_CONFIG_DATA    0xcfc


static uint32_t pci_read(uint32_t dev, uint32_t reg)
{
    outl(PCI_CONFIG_ADDRESS, 0x80000000u | dev << 11 | (reg & 0xfc));
    return inl(PCI_CONFIG_DATA);
}

void pci_scan(void)
{
    unsigned found = 0;
    for (uint32_t dev = 0; dev < 32; dev++) {
        uint32_t id = pci_read(dev, 0);
        if ((id & 0xffff) == 0xffff)
            continue;
        uint32_t class = pci_read(dev, 8) >> 8;
        kprintf("pci: 00:%02x.0 %04x:%04x class %06x\n", dev, id & 0xffff, id >> 16, class);
        found++;
    }
    kprintf("pci: %u functions on bus 0\n", found);
}
