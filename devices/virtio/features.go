package virtio

import "fmt"

// DeviceType is the virtio device ID (virtio 1.2 §5 "Device Types"): what
// the transport reports in its DeviceID register and what the guest's
// drivers match on (Linux: struct virtio_device_id in each driver).
type DeviceType uint32

const (
	TypeNet   DeviceType = 1 // VIRTIO_ID_NET, virtio 1.2 §5.1
	TypeBlock DeviceType = 2 // VIRTIO_ID_BLOCK, virtio 1.2 §5.2
)

func (t DeviceType) String() string {
	switch t {
	case TypeNet:
		return "virtio-net"
	case TypeBlock:
		return "virtio-blk"
	}
	return fmt.Sprintf("virtio-%d", uint32(t))
}

// Feature bits that belong to the transport and the rings rather than to a
// device type (virtio 1.2 §6 "Reserved Feature Bits"). Device types use
// bits 0 to 23; the transport offers the bits below on behalf of every
// device, because the code that implements them lives here.
const (
	// FeatureIndirectDesc lets the driver put a whole chain in a table
	// of its own and spend a single ring descriptor on it (§2.7.5.3).
	FeatureIndirectDesc uint64 = 1 << 28 // VIRTIO_F_INDIRECT_DESC (VIRTIO_RING_F_INDIRECT_DESC)
	// FeatureEventIdx replaces the on/off notification flags by
	// thresholds: used_event and avail_event (§2.7.7, §2.7.10).
	FeatureEventIdx uint64 = 1 << 29 // VIRTIO_F_EVENT_IDX (VIRTIO_RING_F_EVENT_IDX)
	// FeatureVersion1 says the device follows virtio 1.x rather than
	// the legacy 0.9 interface. A version 2 virtio-mmio device must
	// offer it and Linux refuses to bind if it is missing
	// (drivers/virtio/virtio_mmio.c vm_finalize_features).
	FeatureVersion1 uint64 = 1 << 32 // VIRTIO_F_VERSION_1
)

// transportFeatures are offered by every device behind an MMIO transport.
const transportFeatures = FeatureIndirectDesc | FeatureEventIdx | FeatureVersion1

// Device status bits, the Status register (virtio 1.2 §2.1). The driver
// sets them one after the other while it initialises the device (§3.1.1):
// ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK. Writing 0 resets the device.
const (
	StatusAcknowledge uint8 = 1   // ACKNOWLEDGE: the guest found the device
	StatusDriver      uint8 = 2   // DRIVER: the guest has a driver for it
	StatusDriverOK    uint8 = 4   // DRIVER_OK: the driver is ready, the device may run
	StatusFeaturesOK  uint8 = 8   // FEATURES_OK: feature negotiation is complete
	StatusNeedsReset  uint8 = 64  // DEVICE_NEEDS_RESET: set by the device after an unrecoverable error
	StatusFailed      uint8 = 128 // FAILED: the driver gave up on the device

	statusKnown = StatusAcknowledge | StatusDriver | StatusDriverOK | StatusFeaturesOK | StatusNeedsReset | StatusFailed
)

// Bits of the InterruptStatus and InterruptACK registers (virtio 1.2
// §4.2.2): why the device raised its interrupt.
const (
	InterruptUsedBuffer   uint32 = 1 << 0 // a queue's used ring advanced (§2.7.8)
	InterruptConfigChange uint32 = 1 << 1 // the config space or DEVICE_NEEDS_RESET changed

	interruptKnown = InterruptUsedBuffer | InterruptConfigChange
)
