// Package acpi builds the ACPI tables of govmm's machine: a hardware-reduced
// ACPI platform (ACPI 6.4 §4.1) in the style of Firecracker and Cloud
// Hypervisor. There is no firmware in a govmm guest, so instead of a BIOS
// building tables at power-on, the VMM builds them here and the loader
// copies them into guest RAM before the first instruction runs.
//
// # What the guest gets
//
//	RSDP  "RSD PTR "  root pointer; Linux finds it through
//	                  boot_params.acpi_rsdp_addr (Documentation/x86/zero-page.rst)
//	XSDT  "XSDT"      64-bit pointers to every other table but the DSDT
//	FADT  "FACP"      fixed description: hardware-reduced, sleep/reset
//	                  registers at the acpipm ports, pointer to the DSDT
//	MADT  "APIC"      one local APIC per vCPU and the I/O APIC: how Linux
//	                  finds its CPUs and interrupt routing (no MP table)
//	DSDT  "DSDT"      AML: the \_S5_ sleep type, COM1 (so Linux can map
//	                  its IRQ 4) and the pvpanic device
//
// Build lays them out in one blob, each table 16-byte aligned, in the
// order above:
//
//	t, err := acpi.Build(acpi.Config{NumVCPUs: 2, Base: acpi.DefaultBase,
//		PMBase: acpipm.DefaultBase, PVPanicPort: pvpanic.DefaultPort})
//	copy(guestRAM[t.Base:], t.Data)  // by the loader
//	// and boot_params.acpi_rsdp_addr (zero page offset 0x070) = t.RSDP
//
// Every table pointer inside the blob is a guest-physical address computed
// from Config.Base, so the blob is only valid at that address. The loader
// reserves 0xE0000-0xFFFFF in the e820 map, where a PC's BIOS tables
// traditionally live, and DefaultBase puts the tables at its start.
//
// # Data flow inside Linux
//
// acpi_boot_table_init reads the RSDP and XSDT; acpi_boot_init parses the
// FADT (arch/x86/kernel/acpi/boot.c acpi_parse_fadt: IAPC_BOOT_ARCH) and
// the MADT (CPUs, I/O APIC); with HW_REDUCED_ACPI set, x86 skips the legacy
// PIC and PIT timer set-up (acpi_reduced_hw_init). Later ACPICA loads the
// DSDT, the power-off code evaluates \_S5_ and writes the sleep control
// register, PNPACPI hands COM1's port and IRQ to 8250_pnp, and the ACPI
// platform bus creates a device for QEMU0001 that pvpanic-mmio.ko binds to.
//
// Read next: tables.go (headers, checksums, layout), fadt.go, madt.go,
// dsdt.go, and package aml for the DSDT's byte code.
package acpi
