// Package virtio is govmm's virtio core: split virtqueues and the
// virtio-mmio transport (OASIS "Virtual I/O Device (VIRTIO) Version 1.2",
// cited as "virtio 1.2 §n"). Device types live in subpackages: blk is
// virtio-blk, net is virtio-net.
//
// # What virtio is
//
// Emulating real hardware register by register is slow: every register
// access the guest makes is a VM exit. Virtio is hardware designed for
// virtual machines instead. The guest's driver and the device share
// queues in guest RAM; the driver describes a whole request (a disk read
// of 1 MiB, a network packet) in memory, and touches a device register at
// most once to say "there is work". The device does the I/O and writes
// the result back into guest memory. Linux has the drivers built in
// (drivers/virtio, drivers/block/virtio_blk.c), so a stock kernel uses them.
//
// A virtio device is three layers:
//
//   - the transport: how the guest finds the device and talks to its
//     registers. Here virtio-mmio (§4.2): a 512-byte register block at a
//     guest-physical address, announced to Linux by an ACPI device
//     LNRO0005 that the machine puts in the DSDT.
//   - the virtqueues (§2.7): rings of descriptors in guest RAM, the same for
//     every device type.
//   - the device type (§5): what a request means. For virtio-blk, a
//     header saying "read sector 2048", a data buffer and a status byte.
//
// # How a request flows
//
//  1. The driver writes the request into buffers, describes them with a
//     chain of descriptors in the descriptor table, puts the chain's first
//     descriptor index in the avail ring and advances avail->idx.
//  2. It writes the queue's index to QueueNotify. The machine has an
//     ioeventfd on that address: KVM completes the write inside the kernel
//     and signals an eventfd, and the vCPU goes straight back to the guest
//     without a trip to the VMM. A goroutine waiting on the eventfd calls
//     MMIO.Notify, which wakes the device's goroutine for that queue.
//  3. The device goroutine pops chains (Queue.Pop): it reads avail->idx,
//     then the ring entries and descriptors below it, checks every
//     descriptor, and gets the buffers as slices of guest RAM (Chain).
//  4. It does the I/O (a pread into guest RAM, say), marks the pages it
//     wrote dirty for live migration, and pushes the chain to the used ring
//     (Queue.Push): the used element first, then used->idx.
//  5. Unless the driver suppressed it (VIRTQ_AVAIL_F_NO_INTERRUPT, or
//     used_event with VIRTIO_F_EVENT_IDX), the transport raises the
//     interrupt: the machine writes an irqfd and KVM injects it. The
//     guest's handler reads InterruptStatus, acknowledges it and collects
//     the used entries.
//
// The vCPU thread never waits for I/O: it only writes registers. All the
// work happens on device goroutines, and with EVENT_IDX a busy queue needs
// neither notifications nor interrupts for most requests.
//
// # Trust
//
// Everything in the rings comes from the guest and may be wrong or
// hostile. walk.go is the one place that reads descriptors; it checks each
// (indices, loops, flags, lengths, that buffers are RAM through
// vmm.GuestMemory.Slice) and is marked UNTRUSTED. A bad chain is answered
// with an error; a corrupt ring sets DEVICE_NEEDS_RESET. Neither can crash
// the VMM or reach host memory outside guest RAM.
//
// # Live migration
//
// MMIO.Pause stops taking requests and waits for those in flight, so that
// guest RAM holds every result; SaveState then captures registers and ring
// positions (MMIOState), and RestoreState plus Resume continue on the
// destination from the same ring indices.
//
// # Reading order
//
//	features.go     device types, feature and status bits
//	device.go       the Device interface a device type implements
//	mmio.go         the register block (vmm.Device)
//	lifecycle.go    status state machine: negotiation, start, reset, pause
//	queue.go        split virtqueue: Pop, Push, interrupt suppression
//	ring_unsafe.go  atomic access to the 16-bit ring indices
//	walk.go         the checks on every guest descriptor
//	chain.go        a request's buffers as guest memory
//	state.go        saved state
//	log.go          rate-limited logging of guest errors
//	configchange.go devices whose config space changes while the driver runs
//
// then blk/ for a complete device, and virtiotest/, a test driver that
// drives the registers and rings the way Linux does.
package virtio
