package virtio

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"

	"govmm/vmm"
)

// The virtio-mmio transport, version 2 ("modern", virtio 1.2 §4.2): a block
// of 32-bit registers in guest-physical address space, found by Linux's
// drivers/virtio/virtio_mmio.c through an ACPI device LNRO0005 (or a
// device-tree node "virtio,mmio") that names its address and interrupt.

// MMIOSize is the size of one device's register block: the control
// registers up to 0x0ff and the device configuration space from 0x100.
const MMIOSize = 0x200

// QueueNotifyOffset is the QueueNotify register. The driver writes a
// queue's index there to say it added buffers. The machine attaches one
// ioeventfd per queue at this address (KVM_IOEVENTFD with datamatch = the
// queue index), so KVM completes the write in the kernel and the vCPU
// goes straight back to the guest; a goroutine reading the eventfd calls
// Notify.
const QueueNotifyOffset = 0x050

// Register offsets (virtio 1.2 §4.2.2, Table "MMIO Device Register
// Layout"; Linux include/uapi/linux/virtio_mmio.h VIRTIO_MMIO_*).
const (
	RegMagicValue        = 0x000 // R: "virt"
	RegVersion           = 0x004 // R: 2
	RegDeviceID          = 0x008 // R: DeviceType
	RegVendorID          = 0x00c // R
	RegDeviceFeatures    = 0x010 // R: 32 feature bits, chosen by DeviceFeaturesSel
	RegDeviceFeaturesSel = 0x014 // W
	RegDriverFeatures    = 0x020 // W: 32 accepted feature bits, chosen by DriverFeaturesSel
	RegDriverFeaturesSel = 0x024 // W
	RegQueueSel          = 0x030 // W: the queue the Queue* registers refer to
	RegQueueNumMax       = 0x034 // R
	RegQueueNum          = 0x038 // W: the queue's size
	RegQueueReady        = 0x044 // RW
	RegQueueNotify       = QueueNotifyOffset
	RegInterruptStatus   = 0x060 // R: InterruptUsedBuffer | InterruptConfigChange
	RegInterruptACK      = 0x064 // W: clears InterruptStatus bits
	RegStatus            = 0x070 // RW: device status (§2.1)
	RegQueueDescLow      = 0x080 // W: descriptor table GPA
	RegQueueDescHigh     = 0x084
	RegQueueDriverLow    = 0x090 // W: avail ring GPA
	RegQueueDriverHigh   = 0x094
	RegQueueDeviceLow    = 0x0a0 // W: used ring GPA
	RegQueueDeviceHigh   = 0x0a4
	RegSHMSel            = 0x0ac // W: shared memory regions (none here)
	RegSHMLenLow         = 0x0b0
	RegSHMLenHigh        = 0x0b4
	RegSHMBaseLow        = 0x0b8
	RegSHMBaseHigh       = 0x0bc
	RegConfigGeneration  = 0x0fc // R
	RegConfig            = 0x100 // device configuration space
)

const (
	magicValue  = 0x74726976 // "virt" in little-endian
	mmioVersion = 2          // modern virtio-mmio; 1 is the legacy layout
	// VendorID is what the VendorID register reports: "GOVM" in
	// little-endian. Linux only prints it.
	VendorID = 0x4d564f47
)

// MMIOConfig is what the machine gives a transport.
type MMIOConfig struct {
	Memory *vmm.GuestMemory
	// Interrupt raises the device's interrupt: an edge (the machine
	// writes an irqfd). The guest then reads InterruptStatus to learn
	// why. It is called from device goroutines (and from the vCPU
	// thread when a guest error breaks the device), with transport
	// locks held: it must not block or call back into the transport.
	Interrupt func()
	// Log receives messages about guest mistakes (rate-limited) and
	// device errors. May be nil.
	Log func(format string, args ...any)
}

// MMIO is a virtio-mmio transport with one device behind it. It implements
// vmm.Device for the MMIO bus.
type MMIO struct {
	dev       Device
	mem       *vmm.GuestMemory
	interrupt func()
	logf      func(format string, args ...any) // rate-limited, prefixed with the device type
	maxSizes  []uint16                         // QueueNumMax per queue
	offered   uint64                           // DeviceFeatures: the device's and the transport's
	notified  []chan struct{}                  // per queue; handed to each Queue, fed by Notify

	// mu guards the registers and the device's lifecycle. Lock order:
	// mu, then a Queue's mu, then irqMu.
	mu                sync.Mutex
	status            uint8 // without DEVICE_NEEDS_RESET, which is needsReset
	deviceFeaturesSel uint32
	driverFeaturesSel uint32
	driverFeatures    uint64
	queueSel          uint32
	queues            []queueRegs
	active            []*Queue // non-nil while the device runs (DRIVER_OK); nil entries for queues not set up
	paused            bool     // Pause was called and Resume not yet
	closed            bool

	// needsReset is DEVICE_NEEDS_RESET: the device hit an unrecoverable
	// guest error and serves nothing until the driver resets it.
	// Queues read it without taking mu.
	needsReset      atomic.Bool
	interruptStatus atomic.Uint32
	// configGeneration is ConfigGeneration: it advances each time a
	// ConfigChanger device reports a change (configchange.go).
	configGeneration atomic.Uint32

	irqMu      sync.Mutex
	irqPaused  bool // Pause: interrupts are held back
	irqPending bool // an interrupt was held back, to be raised on Resume
}

// queueRegs is one queue's registers as the driver wrote them.
type queueRegs struct {
	num                  uint32 // QueueNum
	ready                bool   // QueueReady
	desc, driver, device vmm.GPA
}

// NewMMIO puts dev behind a new transport, in its reset state. A device
// with no queues or a queue size that is not a power of two up to
// MaxQueueSize is a programming error and panics.
func NewMMIO(dev Device, cfg MMIOConfig) *MMIO {
	if cfg.Memory == nil {
		panic("virtio.NewMMIO: no guest memory")
	}
	maxSizes := dev.QueueMaxSizes()
	if len(maxSizes) == 0 {
		panic(fmt.Sprintf("virtio.NewMMIO: %v has no queues", dev.Type()))
	}
	for i, s := range maxSizes {
		if s == 0 || s > MaxQueueSize || bits.OnesCount16(s) != 1 {
			panic(fmt.Sprintf("virtio.NewMMIO: %v queue %d: bad maximum size %d", dev.Type(), i, s))
		}
	}
	log := RateLimit(cfg.Log)
	prefix := dev.Type().String() + ": "
	m := &MMIO{
		dev:       dev,
		mem:       cfg.Memory,
		interrupt: cfg.Interrupt,
		logf:      func(format string, args ...any) { log(prefix+format, args...) },
		maxSizes:  maxSizes,
		offered:   dev.Features() | transportFeatures,
		notified:  make([]chan struct{}, len(maxSizes)),
		queues:    make([]queueRegs, len(maxSizes)),
	}
	if m.interrupt == nil {
		m.interrupt = func() {}
	}
	for i := range m.notified {
		m.notified[i] = make(chan struct{}, 1)
	}
	m.resetRegisters()
	if c, ok := dev.(ConfigChanger); ok {
		c.SetConfigChanged(m.configChanged)
	}
	return m
}

// NumQueues is the number of queues the device has.
func (m *MMIO) NumQueues() int { return len(m.maxSizes) }

// DeviceType is the type of the device behind the transport.
func (m *MMIO) DeviceType() DeviceType { return m.dev.Type() }

// Notify tells queue that the driver added buffers. It only wakes the
// device's goroutine, so it is cheap and safe from any goroutine: the
// machine's ioeventfd reader calls it, and so does a guest write to
// QueueNotify that no ioeventfd caught.
func (m *MMIO) Notify(queue int) {
	// UNTRUSTED: queue is the value the guest wrote to QueueNotify.
	if queue < 0 || queue >= len(m.notified) {
		m.logf("notify for queue %d, which does not exist", queue)
		return
	}
	select {
	case m.notified[queue] <- struct{}{}:
	default: // a wake-up is already pending; it covers this one
	}
}

// Read handles a guest load from the register block.
func (m *MMIO) Read(offset uint64, data []byte) {
	clear(data)
	if offset >= RegConfig {
		m.readConfig(offset-RegConfig, data)
		return
	}
	// UNTRUSTED: offset and size are the guest's. "The driver MUST only
	// use 32 bit wide and aligned reads and writes to access the control
	// registers" (virtio 1.2 §4.2.2.2); anything else reads as 0.
	if len(data) != 4 || offset%4 != 0 {
		m.logf("%d-byte read at %#x ignored: control registers take aligned 32-bit accesses", len(data), offset)
		return
	}
	m.mu.Lock()
	v := m.readRegister(offset)
	m.mu.Unlock()
	binary.LittleEndian.PutUint32(data, v)
}

// Write handles a guest store to the register block.
func (m *MMIO) Write(offset uint64, data []byte) {
	if offset >= RegConfig {
		m.writeConfig(offset-RegConfig, data)
		return
	}
	// UNTRUSTED: as in Read; other accesses are dropped.
	if len(data) != 4 || offset%4 != 0 {
		m.logf("%d-byte write at %#x ignored: control registers take aligned 32-bit accesses", len(data), offset)
		return
	}
	v := binary.LittleEndian.Uint32(data)
	m.mu.Lock()
	m.writeRegister(offset, v)
	m.mu.Unlock()
}

func (m *MMIO) readRegister(offset uint64) uint32 {
	switch offset {
	case RegMagicValue:
		return magicValue
	case RegVersion:
		return mmioVersion
	case RegDeviceID:
		return uint32(m.dev.Type())
	case RegVendorID:
		return VendorID
	case RegDeviceFeatures:
		switch m.deviceFeaturesSel {
		case 0:
			return uint32(m.offered)
		case 1:
			return uint32(m.offered >> 32)
		}
		return 0 // no feature bits above 63
	case RegQueueNumMax:
		if _, ok := m.selectedQueue(); ok {
			return uint32(m.maxSizes[m.queueSel])
		}
		return 0 // "the queue is not available" (§4.2.3.2): Linux stops looking
	case RegQueueReady:
		if q, ok := m.selectedQueue(); ok && q.ready {
			return 1
		}
		return 0
	case RegInterruptStatus:
		return m.interruptStatus.Load()
	case RegStatus:
		return uint32(m.statusLocked())
	case RegSHMLenLow, RegSHMLenHigh, RegSHMBaseLow, RegSHMBaseHigh:
		// No shared memory regions: "Reading from a non-existent
		// region ... results in a length of -1" (§4.2.2).
		return 0xffffffff
	case RegConfigGeneration:
		// Stays 0 unless the device changes its config space while
		// the driver runs (a ConfigChanger, §2.5.1).
		return m.configGeneration.Load()
	}
	m.logf("read of write-only or unknown register %#x", offset)
	return 0
}

func (m *MMIO) writeRegister(offset uint64, v uint32) {
	switch offset {
	case RegDeviceFeaturesSel:
		m.deviceFeaturesSel = v
	case RegDriverFeatures:
		m.writeDriverFeatures(v)
	case RegDriverFeaturesSel:
		m.driverFeaturesSel = v
	case RegQueueSel:
		m.queueSel = v
	case RegQueueNum, RegQueueReady,
		RegQueueDescLow, RegQueueDescHigh,
		RegQueueDriverLow, RegQueueDriverHigh,
		RegQueueDeviceLow, RegQueueDeviceHigh:
		m.writeQueueRegister(offset, v)
	case RegQueueNotify:
		// Without VIRTIO_F_NOTIFICATION_DATA the value is the
		// queue index (§4.2.2).
		m.Notify(int(v))
	case RegInterruptACK:
		m.interruptStatus.And(^v)
	case RegStatus:
		m.writeStatus(v)
	case RegSHMSel:
		// There are no shared memory regions to select.
	default:
		m.logf("write of %#x to read-only or unknown register %#x ignored", v, offset)
	}
}

func (m *MMIO) writeDriverFeatures(v uint32) {
	// §3.1.1: features are fixed once FEATURES_OK is set.
	if m.status&StatusFeaturesOK != 0 {
		m.logf("DriverFeatures written after FEATURES_OK: ignored")
		return
	}
	switch m.driverFeaturesSel {
	case 0:
		m.driverFeatures = m.driverFeatures&^0xffffffff | uint64(v)
	case 1:
		m.driverFeatures = m.driverFeatures&0xffffffff | uint64(v)<<32
	default:
		if v != 0 {
			m.logf("driver accepts features %#x in word %d, beyond any offered", v, m.driverFeaturesSel)
		}
	}
}

// selectedQueue returns the registers of the queue QueueSel names.
func (m *MMIO) selectedQueue() (*queueRegs, bool) {
	if m.queueSel >= uint32(len(m.queues)) {
		return nil, false
	}
	return &m.queues[m.queueSel], true
}

func (m *MMIO) writeQueueRegister(offset uint64, v uint32) {
	q, ok := m.selectedQueue()
	switch {
	case !ok:
		m.logf("write to queue register %#x for queue %d, which does not exist", offset, m.queueSel)
		return
	case m.active != nil || m.status&StatusDriverOK != 0:
		m.logf("write to queue register %#x while DRIVER_OK is set: ignored until reset", offset)
		return
	case offset == RegQueueReady:
		q.ready = v&1 != 0
		return
	case q.ready:
		// §4.2.3.2: the layout is written before QueueReady.
		m.logf("write to queue register %#x of queue %d, which is ready: ignored", offset, m.queueSel)
		return
	}
	lo := func(a vmm.GPA) vmm.GPA { return a&^0xffffffff | vmm.GPA(v) }
	hi := func(a vmm.GPA) vmm.GPA { return a&0xffffffff | vmm.GPA(v)<<32 }
	switch offset {
	case RegQueueNum:
		q.num = v // checked when the device starts (newQueue)
	case RegQueueDescLow:
		q.desc = lo(q.desc)
	case RegQueueDescHigh:
		q.desc = hi(q.desc)
	case RegQueueDriverLow:
		q.driver = lo(q.driver)
	case RegQueueDriverHigh:
		q.driver = hi(q.driver)
	case RegQueueDeviceLow:
		q.device = lo(q.device)
	case RegQueueDeviceHigh:
		q.device = hi(q.device)
	}
}

// readConfig copies from the device's configuration space; bytes beyond
// it read as 0. Linux reads fields with accesses of their own width
// (virtio_mmio.c vm_get), 64-bit ones as two 32-bit halves.
func (m *MMIO) readConfig(offset uint64, data []byte) {
	// UNTRUSTED: any offset and size the bus lets through.
	if cfg := m.dev.Config(); offset < uint64(len(cfg)) {
		copy(data, cfg[offset:])
	}
}

func (m *MMIO) writeConfig(offset uint64, data []byte) {
	// UNTRUSTED: as in readConfig; writes outside the space are dropped.
	cfg := m.dev.Config()
	if offset >= uint64(len(cfg)) || uint64(len(data)) > uint64(len(cfg))-offset {
		m.logf("%d-byte config write at %#x, outside the %d-byte config space: ignored", len(data), offset, len(cfg))
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dev.WriteConfig(offset, data)
}
