package machine

import (
	"govmm/devices/acpipm"
	"govmm/devices/pvpanic"
	"govmm/devices/serial"
	"govmm/vmm"
)

// The board: where RAM and devices sit in the guest's address spaces. These
// are the IBM PC's traditional places, so a stock kernel finds the serial
// port and the keyboard controller without being told; the rest is
// described to it by ACPI (boot/acpi).
const (
	COM1Port    = serial.COM1Base // 16550A UART, ttyS0
	COM1IRQ     = serial.COM1IRQ
	ACPIPMPort  = acpipm.DefaultBase  // ACPI sleep control/status and reset registers (FADT)
	PVPanicPort = pvpanic.DefaultPort // QEMU's pvpanic port, described in the DSDT

	// MMIOHoleStart is where RAM stops below 4 GiB: the last GiB of 32-bit
	// space is left to the IOAPIC (0xfec00000), the local APIC (0xfee00000)
	// and later PCI devices, as on real PCs.
	MMIOHoleStart vmm.GPA = 3 << 30
	highRAMStart  vmm.GPA = 4 << 30

	// KVM's helper pages for Intel real-mode emulation, just below the
	// 4 GiB line where the BIOS ROM would be (Firecracker uses the same).
	IdentityMapAddr vmm.GPA = 0xfffbc000
	TSSAddr         vmm.GPA = 0xfffbd000
)

// RAMLayout splits size bytes of RAM around the MMIO hole: everything below
// 3 GiB if it fits, the rest from 4 GiB up.
func RAMLayout(size uint64) []vmm.MemoryRegion {
	size = size &^ (vmm.PageSize - 1)
	low := min(size, uint64(MMIOHoleStart))
	layout := []vmm.MemoryRegion{{Start: 0, Size: low}}
	if size > low {
		layout = append(layout, vmm.MemoryRegion{Start: highRAMStart, Size: size - low})
	}
	return layout
}
