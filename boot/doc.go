// Package boot loads a Linux kernel the way a boot loader would, following
// the x86 boot protocol (kernel Documentation/x86/boot.rst and
// zero-page.rst), and sets the boot vCPU at the kernel's 64-bit entry point.
// Package boot/acpi builds the ACPI tables firmware would provide.
//
// govmm skips the 16-bit setup code and the 32-bit entry: it builds what
// those would have left in memory (the zero page, page tables, a GDT) and
// starts the CPU directly in long mode at startup_64, the protocol's "64-bit
// BOOT PROTOCOL". The kernel then decompresses itself and boots.
//
// # Guest-physical memory map at the kernel entry point
//
//	0x0000_0000 ┌──────────────────────────────┐
//	            │ (real-mode IVT, unused)      │
//	0x0000_0500 │ GDT: null, -, __BOOT_CS 0x10,│ layout.go GDTAddr
//	            │   __BOOT_DS 0x18, TSS 0x20   │
//	0x0000_7000 │ zero page (struct            │ ZeroPageAddr; RSI points here
//	            │   boot_params): setup header,│
//	            │   e820 map, initrd, cmdline  │
//	0x0000_8ff0 │ initial stack (grows down)   │ BootStackTop
//	0x0000_9000 │ PML4 → 0xa000 PDPT →         │ identity map of 4 GiB
//	0x0000_b000 │   4 page directories, 2 MiB  │   with 2 MiB pages
//	            │   pages (to 0xefff)          │
//	0x0002_0000 │ kernel command line          │ CmdlineAddr
//	0x0009_fc00 ├──────────────────────────────┤ e820: reserved from here
//	0x000e_0000 │ ACPI: RSDP, XSDT, FADT,      │ ACPIAddr (boot/acpi)
//	            │   MADT, DSDT                 │
//	0x0010_0000 ├──────────────────────────────┤ e820: RAM from 1 MiB
//	            │ compressed kernel            │ KernelAddr; entry at +0x200
//	0x0100_0000 │ where it decompresses itself │ LOAD_PHYSICAL_ADDR, init_size
//	            │   (or where KASLR puts it)   │   bytes
//	            │ ... free ...                 │
//	            │ initrd (top of low RAM)      │ placeInitrd
//	 RAM end or └──────────────────────────────┘
//	0xC000_0000   MMIO hole to 4 GiB: IOAPIC 0xfec00000, LAPIC 0xfee00000
//	0x1_0000_0000 RAM above 3 GiB continues here (vmm/machine RAMLayout)
//
// Reading order: kernel.go (parse and check the bzImage), linux.go (Load:
// everything written into RAM), cpu.go (GDT, page tables, entry registers).
// Next: vmm/machine's LoadLinux, which calls Load and boot/acpi.
package boot
