/* PCI bus 0 scan through configuration mechanism #1 (`pci_scan=1`): one line per
 * function 0 that answers, "pci: 00:DD.0 VVVV:DDDD class CCCCCC", then the count. */
#ifndef HVDBG_GUEST_PCI_H
#define HVDBG_GUEST_PCI_H

void pci_scan(void);

#endif
