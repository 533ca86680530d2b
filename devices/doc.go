// Package devices is the root of govmm's emulated platform devices. It holds
// no code: each device is a small subpackage with one job.
//
//	serial   16550A UART on COM1 (0x3f8, IRQ 4): the guest's console
//	i8042    the PS/2 controller's CPU-reset command (ports 0x60, 0x64)
//	acpipm   hardware-reduced ACPI sleep and reset registers (0x600): power off, reboot
//	pvpanic  QEMU's panic notification port (0x505)
//	virtio   virtqueues and the virtio-mmio transport (0xd0000000 + n*0x1000, GSI 16+n)
//	virtio/blk  virtio-blk: a disk, backed by package disk
//	virtio/net  virtio-net: a NIC, backed by a TAP device (package tap)
//	tap      TAP devices (/dev/net/tun), multi-queue, for virtio-net
//	disk     disk backends: image files and NBD exports (disk/nbd: the NBD protocol)
//
// The ACPI tables that tell the guest where these are live in boot/acpi;
// the machine that creates and wires them lives in package vmm/machine.
//
// # How an access reaches a device
//
// A guest IN/OUT to a port the kernel does not handle makes the vCPU's
// KVM_RUN return with exit reason KVM_EXIT_IO (Documentation/virt/kvm/api.rst,
// "kvm_run"); an access to guest-physical memory with no memory slot behind
// it returns KVM_EXIT_MMIO. The vCPU loop hands the address and data to a
// vmm.Bus (vmm/bus.go), which finds the device registered at
// [base, base+size) and calls its Read or Write with offset = address - base.
// A device therefore never knows where the machine put it, and does not
// import package vmm: it just has the two methods
//
//	Read(offset uint64, data []byte)   // fill data (1, 2, 4 or 8 bytes, little-endian)
//	Write(offset uint64, data []byte)
//
// Both run on the vCPU thread that exited, and the vCPU waits for them, so a
// device must never block there. offset and len(data) are chosen by the
// guest: each device validates them in one place marked "UNTRUSTED".
//
// # How a device interrupts the guest
//
// A device that can interrupt takes an IRQLine, an interface it declares
// itself:
//
//	type IRQLine interface { SetLevel(high bool) }
//
// The machine implements it with KVM_IRQ_LINE on the in-kernel interrupt
// controller (Documentation/virt/kvm/api.rst, "KVM_IRQ_LINE"). Devices model
// their real output pin: they compute the level after every change and call
// SetLevel only when it changes. The I/O APIC turns the ISA lines' rising
// edges into interrupts.
//
// Devices that ask the machine to do something (power off, reset, report a
// panic) take a small Handler interface with one method per request, plus a
// Funcs/HandlerFunc adapter. Handlers run on the vCPU thread.
//
// # Saved state
//
// For migration every device has an exported State struct of plain values
// (JSON- and gob-friendly), SaveState() State, and RestoreState(State) error.
// RestoreState treats the state as untrusted input: it validates every field,
// returns an error naming the impossible value, and leaves the device
// untouched when it refuses.
//
// # Reading order
//
// Start with pvpanic (the smallest complete device: one port, one handler),
// then acpipm and i8042, then serial, the one with real register semantics,
// interrupts and a second goroutine. Then virtio (its doc.go), the devices
// that do their I/O on goroutines of their own: a guest write to a queue's
// notify register reaches them through an ioeventfd, and they interrupt
// through an irqfd (vmm/eventfd.go), so the vCPU never waits for a disk.
package devices
