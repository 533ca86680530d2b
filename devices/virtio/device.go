package virtio

import "encoding/json"

// Device is a virtio device type (virtio-blk, later virtio-net) as the
// transport drives it. The transport owns everything the specification
// defines for all devices: registers, feature negotiation, the status state
// machine, the rings, interrupts, pausing for migration. A Device supplies
// what is particular to its type: its feature bits, how many queues of
// what size, its configuration space, and what it does with the chains it
// pops.
//
// Lifecycle, driven by the guest through the Status register:
//
//	Activate   the driver set DRIVER_OK: start serving the queues
//	Reset      the driver wrote 0 to Status (or the VMM closes the device):
//	           stop serving, forget the queues
//
// The transport calls these methods with its own lock held, on the vCPU
// thread (or the VMM's thread for Close and RestoreState); they must not
// call back into the transport and must not block on the guest.
//
// Pausing for migration needs nothing from the device: Queue.Pop hands out
// nothing while the transport is paused, and the transport waits until
// every chain handed out before has been pushed. A device must therefore
// push every chain it pops within a bounded time.
type Device interface {
	// Type is the virtio device ID.
	Type() DeviceType

	// Features returns the device-type feature bits the device offers
	// (bits 0-23, virtio 1.2 §2.2). The transport adds its own
	// (FeatureVersion1, FeatureIndirectDesc, FeatureEventIdx) and
	// refuses a driver that accepts anything not offered. The result
	// must not change over the device's life.
	Features() uint64

	// QueueMaxSizes returns, for each of the device's queues, the largest
	// size it accepts (the QueueNumMax register): a power of two no
	// larger than MaxQueueSize.
	QueueMaxSizes() []uint16

	// Config returns the device-specific configuration space as the
	// driver reads it now (virtio 1.2 §4.2.2, offset 0x100 on). The
	// transport copies out the bytes the guest accesses; bytes past the
	// end read as zero.
	Config() []byte

	// WriteConfig handles a driver write to the configuration space.
	// The transport has checked that [offset, offset+len(data)) lies
	// inside Config(); the device ignores writes to read-only fields.
	WriteConfig(offset uint64, data []byte)

	// Activate starts the device with the features the driver accepted
	// and its queues: queues[i] is queue i, or nil if the driver did not
	// set it up. The device typically starts one goroutine per queue
	// that waits on Queue.Notified and drains Queue.Pop. An error
	// (a feature combination the device cannot serve) sets
	// DEVICE_NEEDS_RESET.
	Activate(features uint64, queues []*Queue) error

	// Reset stops the goroutines Activate started, waiting for them to
	// exit, and returns the device to its state before Activate. The
	// transport has already drained the queues: no chain is in flight.
	// Reset on a device that is not active does nothing.
	Reset()

	// SaveState returns the device's own saved state (the transport
	// saves the features and queues). It is called on a device that is
	// paused or not active.
	SaveState() (json.RawMessage, error)

	// RestoreState checks a state from SaveState, possibly from another
	// host, and applies it. On error the device must be unchanged. It
	// is called before Activate on a device that is not active.
	RestoreState(json.RawMessage) error
}
