package acpi

import "encoding/binary"

// MADT, "Multiple APIC Description Table" (ACPI 6.4 §5.2.12). Revision 5 is
// the ACPI 6.4 revision. Without it (and with CONFIG_X86_MPPARSE off, as in
// Debian's cloud kernel) Linux would find neither its application
// processors nor the I/O APIC.
const (
	madtRevision = 5

	// KVM's in-kernel irqchip places the local APIC and I/O APIC at the
	// addresses of real hardware (Intel SDM Vol. 3 §10.4.1; the 82093AA
	// datasheet), and Linux reads them from here.
	localAPICAddr = 0xFEE00000
	ioAPICAddr    = 0xFEC00000
	ioAPICID      = 0

	madtPCATCompat = 1 << 0 // PCAT_COMPAT: dual 8259s are present too (KVM emulates them)

	madtTypeLocalAPIC = 0 // Processor Local APIC Structure (§5.2.12.2), 8 bytes
	madtTypeIOAPIC    = 1 // I/O APIC Structure (§5.2.12.3), 12 bytes
	localAPICEnabled  = 1 << 0
)

// buildMADT describes one local APIC per vCPU, with ACPI processor UID and
// APIC ID both equal to the vCPU index (the machine creates vCPU i with
// APIC ID i), and one I/O APIC whose 24 pins are GSIs 0-23.
//
// There are no Interrupt Source Override entries. A PC BIOS lists one for
// ISA IRQ 0 (timer on I/O APIC pin 2) and for the SCI; here the identity
// mapping is the truth: KVM's default GSI routing (KVM_CREATE_IRQCHIP,
// virt/kvm/irqchip.c and arch/x86/kvm/irq_comm.c default_routing) connects
// ISA IRQ n to I/O APIC pin n, so COM1's IRQ 4 is GSI 4 (which the DSDT's
// COM1 device tells Linux), and a hardware-reduced platform has no SCI.
func buildMADT(cfg Config) []byte {
	body := make([]byte, 8, 8+8*cfg.NumVCPUs+12)
	binary.LittleEndian.PutUint32(body[0:], localAPICAddr)
	binary.LittleEndian.PutUint32(body[4:], madtPCATCompat)
	for i := 0; i < cfg.NumVCPUs; i++ {
		body = append(body,
			madtTypeLocalAPIC, 8,
			byte(i), // ACPI Processor UID
			byte(i), // APIC ID
			localAPICEnabled, 0, 0, 0)
	}
	ioapic := []byte{madtTypeIOAPIC, 12, ioAPICID, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(ioapic[4:], ioAPICAddr)
	binary.LittleEndian.PutUint32(ioapic[8:], 0) // Global System Interrupt Base
	body = append(body, ioapic...)
	return table("APIC", madtRevision, body)
}
