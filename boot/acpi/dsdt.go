package acpi

import (
	"fmt"

	"govmm/boot/acpi/aml"
	"govmm/devices/acpipm"
	"govmm/devices/pvpanic"
	"govmm/devices/serial"
)

// DSDT, "Differentiated System Description Table" (ACPI 6.4 §5.2.11.1):
// a header followed by AML. Revision 2 makes AML integers 64 bits wide.
const dsdtRevision = 2

// virtioMMIOHID is the _HID of a virtio-mmio device (Linaro's ACPI vendor
// prefix LNRO, as on arm64 QEMU's virt machine).
const virtioMMIOHID = "LNRO0005"

// MaxVirtioMMIO bounds the virtio-mmio devices a DSDT describes: their
// names are VR00 to VRFF.
const MaxVirtioMMIO = 256

// dsdtAML returns the DSDT's definition block, in ASL:
//
//	Name (_S5_, Package (4) { 5, 5, 0, 0 })  // SLP_TYPa, SLP_TYPb, reserved
//	Scope (\_SB) {
//	    Device (COM1) {
//	        Name (_HID, EisaId ("PNP0501"))   // 16550A-compatible COM port
//	        Name (_UID, 1)
//	        Name (_STA, 0x0F)
//	        Name (_CRS, ResourceTemplate () {
//	            IO (Decode16, 0x3F8, 0x3F8, 1, 8)
//	            IRQNoFlags () { 4 }
//	        })
//	    }
//	    Device (PEVT) {
//	        Name (_HID, "QEMU0001")
//	        Name (_CRS, ResourceTemplate () { IO (Decode16, 0x505, 0x505, 1, 1) })
//	        Name (_STA, 0x0F)
//	    }
//	}
//
// Each virtio-mmio device adds (n counting from 0, in hex):
//
//	Device (VRnn) {
//	    Name (_HID, "LNRO0005")           // virtio-mmio
//	    Name (_UID, n)
//	    Name (_STA, 0x0F)
//	    Name (_CRS, ResourceTemplate () {
//	        Memory32Fixed (ReadWrite, base, size)
//	        Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi }
//	    })
//	}
//
// "LNRO0005" is the ACPI ID Linux's virtio_mmio driver matches
// (drivers/virtio/virtio_mmio.c, virtio_mmio_acpi_match); ACPI enumerates
// it as a platform device with these two resources. It is the only way in
// for Debian's kernels, which are built without the virtio_mmio.device=
// command-line option (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES). The interrupt is
// an edge: the device signals each batch of used buffers once, through an
// irqfd, and the driver reads and acknowledges InterruptStatus.
//
// \_S5_ (§7.4.2 "\_Sx (System States)") tells OSPM what to write into
// SLP_TYP to power off; it must equal acpipm.SleepTypeS5. Only S5 is
// offered, so Linux will not try to suspend.
//
// COM1 is listed because on a hardware-reduced platform Linux installs no
// legacy PIC (arch/x86/kernel/acpi/boot.c acpi_reduced_hw_init sets
// legacy_pic = &null_legacy_pic), so the ISA IRQs 0-15 get no fixed IRQ
// numbers and the 8250 driver's built-in guess "0x3f8, IRQ 4" has no IRQ to
// request. Through this device, PNPACPI maps GSI 4 (edge, active high) to an
// IRQ and 8250_pnp hands it to ttyS0, as on QEMU's microvm machine.
//
// The devices live under \_SB, where system-bus devices belong (§5.3.1);
// _STA 0x0F is "present, enabled, shown in UI, functioning" (§6.3.7).
func dsdtAML(cfg Config) ([]byte, error) {
	port := cfg.PVPanicPort
	devices := []aml.Term{
		aml.Device("COM1",
			aml.Name("_HID", aml.EISAID("PNP0501")),
			aml.Name("_UID", aml.Integer(1)),
			aml.Name("_STA", aml.Integer(0x0F)),
			aml.Name("_CRS", aml.ResourceTemplate(
				aml.IO(serial.COM1Base, serial.COM1Base, 1, serial.RegisterCount),
				aml.IRQNoFlags(serial.COM1IRQ),
			)),
		),
		aml.Device("PEVT",
			aml.Name("_HID", aml.String(pvpanic.HID)),
			aml.Name("_CRS", aml.ResourceTemplate(aml.IO(port, port, 1, 1))),
			aml.Name("_STA", aml.Integer(0x0F)),
		),
	}
	for i, d := range cfg.VirtioMMIO {
		devices = append(devices, aml.Device(fmt.Sprintf("VR%02X", i),
			aml.Name("_HID", aml.String(virtioMMIOHID)),
			aml.Name("_UID", aml.Integer(uint64(i))),
			aml.Name("_STA", aml.Integer(0x0F)),
			aml.Name("_CRS", aml.ResourceTemplate(
				aml.Memory32Fixed(uint32(d.Base), d.Size),
				aml.InterruptEdgeHigh(d.GSI),
			)),
		))
	}
	return aml.Encode(
		aml.Name("_S5_", aml.Package(
			aml.Integer(acpipm.SleepTypeS5),
			aml.Integer(acpipm.SleepTypeS5),
			aml.Integer(0),
			aml.Integer(0),
		)),
		aml.Scope(`\_SB_`, devices...),
	)
}
