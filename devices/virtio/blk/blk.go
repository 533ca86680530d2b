package blk

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync"

	"govmm/devices/disk"
	"govmm/devices/virtio"
)

// Feature bits of virtio-blk (virtio 1.2 §5.2.3).
const (
	featureSegMax      = 1 << 2  // VIRTIO_BLK_F_SEG_MAX: seg_max is valid
	featureRO          = 1 << 5  // VIRTIO_BLK_F_RO: the disk is read-only
	featureBlkSize     = 1 << 6  // VIRTIO_BLK_F_BLK_SIZE: blk_size is valid
	featureFlush       = 1 << 9  // VIRTIO_BLK_F_FLUSH: the FLUSH command exists
	featureDiscard     = 1 << 13 // VIRTIO_BLK_F_DISCARD
	featureWriteZeroes = 1 << 14 // VIRTIO_BLK_F_WRITE_ZEROES
)

const (
	sectorSize = 512 // virtio-blk addresses the disk in 512-byte sectors, whatever blk_size says
	idBytes    = 20  // VIRTIO_BLK_ID_BYTES: the GET_ID answer

	// queueSize is the request queue's QueueNumMax, QEMU's default.
	queueSize = 256
	// segMax is the most data buffers per request the driver may use.
	// A request adds a header and a status buffer, and the whole chain
	// must fit the queue (§2.7.5.3.1): QEMU's queue_size - 2.
	segMax = queueSize - 2

	// Limits for DISCARD and WRITE_ZEROES. A segment may cover up to
	// 2 GiB, so that one request does not hold a worker for long; Linux
	// sends several segments per discard (up to max_discard_seg), one
	// per write zeroes.
	maxZeroSectors      = 1 << 22
	maxDiscardSegments  = 32
	maxWriteZeroesSegs  = 1
	discardAlignSectors = 8 // 4 KiB: the block size file systems deallocate in
)

// Layout of struct virtio_blk_config (virtio 1.2 §5.2.4), little-endian.
// Fields for features not offered (size_max, geometry, topology, writeback,
// num_queues, secure erase, zoned) stay 0.
const (
	cfgCapacity              = 0  // le64, in 512-byte sectors
	cfgSegMax                = 12 // le32
	cfgBlkSize               = 20 // le32
	cfgMaxDiscardSectors     = 36 // le32
	cfgMaxDiscardSeg         = 40 // le32
	cfgDiscardSectorAlign    = 44 // le32
	cfgMaxWriteZeroesSectors = 48 // le32
	cfgMaxWriteZeroesSeg     = 52 // le32
	cfgWriteZeroesMayUnmap   = 56 // u8
	configSize               = 60 // up to the end of write_zeroes_may_unmap's padding
)

// Config describes a virtio-blk device.
type Config struct {
	Disk disk.Disk
	// ReadOnly refuses writes even if the backend allows them.
	ReadOnly bool
	// Serial is the disk's ID string for VIRTIO_BLK_T_GET_ID (Linux:
	// /sys/block/vda/serial, /dev/disk/by-id). At most 20 bytes; a
	// longer one is cut, as QEMU does.
	Serial string
	// Log receives guest errors (rate-limited) and backend errors. May
	// be nil.
	Log func(format string, args ...any)
}

// Device is a virtio-blk device. It implements virtio.Device.
type Device struct {
	disk      disk.Disk
	discarder disk.Discarder // nil when DISCARD is not offered
	zeroer    disk.ZeroWriter
	readOnly  bool
	capacity  uint64 // in sectors
	features  uint64
	config    []byte
	logf      func(format string, args ...any)

	serial [idBytes]byte // NUL-padded; changed only by RestoreState, before Activate

	mu         sync.Mutex
	negotiated uint64        // the features the driver accepted, set by Activate
	stop       chan struct{} // closed by Reset to end the queue goroutines
	workers    sync.WaitGroup
}

var _ virtio.Device = (*Device)(nil)

// New returns a virtio-blk device for cfg.Disk; put it behind a transport
// with virtio.NewMMIO. A nil Disk is a programming error and panics.
func New(cfg Config) *Device {
	if cfg.Disk == nil {
		panic("blk.New: no disk")
	}
	log := virtio.RateLimit(cfg.Log)
	d := &Device{
		disk:     cfg.Disk,
		readOnly: cfg.ReadOnly || cfg.Disk.ReadOnly(),
		capacity: cfg.Disk.Size() / sectorSize,
		logf:     func(format string, args ...any) { log("virtio-blk: "+format, args...) },
		features: featureSegMax | featureBlkSize | featureFlush,
	}
	if len(cfg.Serial) > idBytes {
		d.logf("serial %q is longer than %d bytes: cut", cfg.Serial, idBytes)
	}
	copy(d.serial[:], cfg.Serial)
	if d.readOnly {
		d.features |= featureRO
	} else {
		// DISCARD and WRITE_ZEROES only where the backend can do them
		// natively, and never on a read-only disk.
		d.discarder, _ = cfg.Disk.(disk.Discarder)
		d.zeroer, _ = cfg.Disk.(disk.ZeroWriter)
		if d.discarder != nil {
			d.features |= featureDiscard
		}
		if d.zeroer != nil {
			d.features |= featureWriteZeroes
		}
	}
	d.config = d.makeConfig()
	return d
}

func (d *Device) makeConfig() []byte {
	c := make([]byte, configSize)
	le := binary.LittleEndian
	le.PutUint64(c[cfgCapacity:], d.capacity)
	le.PutUint32(c[cfgSegMax:], segMax)
	le.PutUint32(c[cfgBlkSize:], sectorSize)
	if d.discarder != nil {
		le.PutUint32(c[cfgMaxDiscardSectors:], maxZeroSectors)
		le.PutUint32(c[cfgMaxDiscardSeg:], maxDiscardSegments)
		le.PutUint32(c[cfgDiscardSectorAlign:], discardAlignSectors)
	}
	if d.zeroer != nil {
		le.PutUint32(c[cfgMaxWriteZeroesSectors:], maxZeroSectors)
		le.PutUint32(c[cfgMaxWriteZeroesSeg:], maxWriteZeroesSegs)
		// The backend may deallocate when the driver allows it
		// (disk.ZeroWriter's mayUnmap); §5.2.6.2 wants the field set
		// unless it never can.
		c[cfgWriteZeroesMayUnmap] = 1
	}
	return c
}

// Type is virtio.TypeBlock.
func (d *Device) Type() virtio.DeviceType { return virtio.TypeBlock }

// Features are the virtio-blk feature bits offered.
func (d *Device) Features() uint64 { return d.features }

// QueueMaxSizes: one request queue (no VIRTIO_BLK_F_MQ).
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{queueSize} }

// Config is struct virtio_blk_config. It never changes: the disk cannot
// be resized while the guest runs.
func (d *Device) Config() []byte { return d.config }

// WriteConfig ignores the write: without VIRTIO_BLK_F_CONFIG_WCE the config
// space is read-only.
func (d *Device) WriteConfig(offset uint64, data []byte) {
	d.logf("write to read-only config space at %#x ignored", offset)
}

// Activate starts one goroutine for the request queue.
func (d *Device) Activate(features uint64, queues []*virtio.Queue) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.negotiated = features
	stop := make(chan struct{})
	d.stop = stop
	for _, q := range queues {
		if q != nil {
			d.workers.Go(func() { d.serveQueue(q, stop) })
		}
	}
	return nil
}

// Reset stops the queue goroutines and waits for them.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stop != nil {
		close(d.stop)
		d.workers.Wait()
		d.stop = nil
	}
	d.negotiated = 0
}

// State is the device's saved state. The disk itself (its path or NBD
// export) travels in the machine's description; the state records what the
// guest has seen of it, so that a destination configured differently is
// refused rather than changing the disk under the guest.
type State struct {
	Serial   string
	ReadOnly bool
	Capacity uint64 // in 512-byte sectors
}

// SaveState returns the state as JSON.
func (d *Device) SaveState() (json.RawMessage, error) {
	return json.Marshal(State{
		Serial:   string(trimNUL(d.serial[:])),
		ReadOnly: d.readOnly,
		Capacity: d.capacity,
	})
}

// RestoreState checks that this device shows the guest the same disk as the
// saved one, and takes over its serial (which GET_ID may have reported).
func (d *Device) RestoreState(data json.RawMessage) error {
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("virtio-blk state: %w", err)
	}
	switch {
	case len(s.Serial) > idBytes:
		return fmt.Errorf("virtio-blk state: serial %q is longer than %d bytes", s.Serial, idBytes)
	case s.ReadOnly != d.readOnly:
		return fmt.Errorf("virtio-blk state: the disk was read-only=%v, here it is read-only=%v", s.ReadOnly, d.readOnly)
	case s.Capacity != d.capacity:
		return fmt.Errorf("virtio-blk state: the disk had %d sectors, here it has %d", s.Capacity, d.capacity)
	}
	d.serial = [idBytes]byte{}
	copy(d.serial[:], s.Serial)
	return nil
}

func trimNUL(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

// Close releases the disk backend (a file, an NBD connection and its
// reconnect loop). The machine calls it when it unplugs the device, after
// the transport has stopped it, so no request is in flight.
func (d *Device) Close() error { return d.disk.Close() }
