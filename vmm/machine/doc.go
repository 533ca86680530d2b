// Package machine is govmm's board description: it assembles a KVM VM,
// guest RAM, the in-kernel interrupt controllers and timer, the platform
// devices and the vCPUs into a PC that a stock Linux kernel recognises, and
// runs it until the guest powers off, reboots, panics or crashes.
//
// It is the only package that names every board device and every address
// (see layout.go); virtio devices it knows only as virtio.Device in a slot,
// built from a spec by a DeviceFactory (cmd/govmm names their types). The
// vmm core below it knows only buses and exits, and the devices know only
// their registers. Reading order: New (the machine comes to
// life in five steps), LoadLinux (firmware's job: ACPI tables, then
// boot.Load), Run and the Exit it returns (exit.go). For live migration,
// state.go saves and restores everything but RAM (SaveState, RestoreState:
// the destination calls New, then RestoreState instead of LoadLinux), and
// cpuid.go checks that the destination's CPU can run the guest, and
// migrate.go presents the machine to package migration: as a Source
// (MigrationSource) and as a Destination built from the incoming layout.
// virtio.go plugs virtio devices into numbered slots (MMIO block, GSI,
// ioeventfd per queue, irqfd), lists them for ACPI, and rebuilds them on a
// migration destination from the specs the source sends.
//
// Next: package boot for what LoadLinux writes into RAM, package devices for
// what answers the guest on the buses.
package machine
