// Package pvpanic implements QEMU's paravirtual panic device (QEMU
// docs/specs/pvpanic.rst), the way a guest kernel tells the VMM "I have
// panicked" so the VMM can stop the VM and report why, instead of leaving a
// dead guest spinning.
//
// # Where it sits
//
// One I/O port, conventionally DefaultPort (0x505), registered with size
// Size (1). The guest finds it through ACPI: the DSDT built by package
// boot/acpi describes a Device with _HID HID ("QEMU0001") and an IO
// resource at the port. Linux's pvpanic-mmio.ko (drivers/misc/pvpanic/
// pvpanic-mmio.c, despite its name it accepts an IO resource) binds to that
// _HID, and pvpanic.ko registers a panic notifier.
//
// # Protocol
//
// Read: the events the device supports (SupportedEvents). The driver ANDs
// this with what it knows and only ever sends those.
// Write: a bit mask of events. EventPanicked (bit 0) is written from the
// panic notifier; EventCrashLoaded (bit 1) when the kernel is about to boot
// a kdump crash kernel. Each event calls the matching Handler method on the
// vCPU thread; the machine typically stops the VM with reason "guest
// panicked".
//
// Saved state: the events the guest has reported so far (sticky, for
// diagnostics such as `govmm` status output).
//
// Read next: pvpanic.go.
package pvpanic
