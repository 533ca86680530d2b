package boot

import (
	"govmm/boot/acpi"
	"govmm/vmm"
)

// Where the loader puts things in guest-physical memory. The map, with the
// reason for each choice, is drawn in doc.go.
const (
	GDTAddr        vmm.GPA = 0x500            // boot GDT (6 entries)
	ZeroPageAddr   vmm.GPA = 0x7000           // struct boot_params, "the zero page"
	BootStackTop   vmm.GPA = 0x8ff0           // initial RSP; the kernel switches stacks at once
	PML4Addr       vmm.GPA = 0x9000           // identity page tables: PML4,
	PDPTAddr       vmm.GPA = 0xa000           //   one PDPT,
	PDAddr         vmm.GPA = 0xb000           //   four page directories of 2 MiB pages (4 GiB)
	CmdlineAddr    vmm.GPA = 0x20000          // kernel command line
	EBDAStart      vmm.GPA = 0x9fc00          // start of the legacy reserved area (EBDA, VGA, ROMs)
	ACPIAddr       vmm.GPA = acpi.DefaultBase // ACPI tables (RSDP found here by scanning too)
	LegacyEnd      vmm.GPA = 0x100000
	KernelAddr     vmm.GPA = 0x100000  // protected-mode kernel ("code32_start")
	kernelRunStart vmm.GPA = 0x1000000 // where a relocatable kernel decompresses itself (LOAD_PHYSICAL_ADDR)

	identityMapped = 4 << 30 // the boot page tables map the first 4 GiB
)

// Boot GDT selectors required by the 64-bit boot protocol (boot.rst, "64-bit
// BOOT PROTOCOL": "__BOOT_CS(0x10) ... __BOOT_DS(0x18)").
const (
	bootCS = 0x10
	bootDS = 0x18
	bootTR = 0x20
)
