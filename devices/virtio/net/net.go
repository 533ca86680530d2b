package net

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	stdnet "net" // this package is called net too
	"sync"
	"sync/atomic"

	"govmm/devices/virtio"
)

// Feature bits of virtio-net (virtio 1.2 §5.1.3). The offloads come in
// pairs: the device's (CSUM, HOST_*: the guest may send unfinished work)
// and the driver's (GUEST_*: the guest accepts unfinished work). They are
// offered only on a backend that can carry such frames (offload.go).
const (
	featureCsum          = 1 << 0  // VIRTIO_NET_F_CSUM: the device finishes checksums (NEEDS_CSUM on transmit)
	featureGuestCsum     = 1 << 1  // VIRTIO_NET_F_GUEST_CSUM: the driver takes partial checksums, and DATA_VALID
	featureMAC           = 1 << 5  // VIRTIO_NET_F_MAC: mac in the config space is valid
	featureGuestTSO4     = 1 << 7  // VIRTIO_NET_F_GUEST_TSO4: the driver takes TCP/IPv4 frames still to be segmented
	featureGuestTSO6     = 1 << 8  // VIRTIO_NET_F_GUEST_TSO6: ... TCP/IPv6
	featureGuestECN      = 1 << 9  // VIRTIO_NET_F_GUEST_ECN: ... with ECN (VIRTIO_NET_HDR_GSO_ECN)
	featureHostTSO4      = 1 << 11 // VIRTIO_NET_F_HOST_TSO4: the device segments TCP/IPv4 frames
	featureHostTSO6      = 1 << 12 // VIRTIO_NET_F_HOST_TSO6: ... TCP/IPv6
	featureHostECN       = 1 << 13 // VIRTIO_NET_F_HOST_ECN: ... with ECN
	featureMrgRxbuf      = 1 << 15 // VIRTIO_NET_F_MRG_RXBUF: a received frame may span several buffers
	featureStatus        = 1 << 16 // VIRTIO_NET_F_STATUS: status in the config space is valid
	featureCtrlVQ        = 1 << 17 // VIRTIO_NET_F_CTRL_VQ: there is a control queue
	featureGuestAnnounce = 1 << 21 // VIRTIO_NET_F_GUEST_ANNOUNCE: the guest announces itself on request (needs CTRL_VQ)

	// alwaysOffered are the features offered whatever the backend.
	alwaysOffered = featureMAC | featureMrgRxbuf | featureStatus | featureCtrlVQ | featureGuestAnnounce
)

// Queues (virtio 1.2 §5.1.2). Without VIRTIO_NET_F_MQ there is one pair,
// and the control queue, if negotiated, comes right after it.
const (
	rxQueue   = 0 // receiveq1 in the specification (receiveq0 in QEMU's counting)
	txQueue   = 1 // transmitq1
	ctrlQueue = 2 // controlq

	// Queue sizes, QEMU's defaults.
	dataQueueSize = 256
	ctrlQueueSize = 64
)

// Layout of struct virtio_net_config (virtio 1.2 §5.1.4), little-endian.
// Fields after status belong to features not offered (MQ, MTU,
// SPEED_DUPLEX, RSS) and are left out; reads past the end are 0.
const (
	cfgMAC     = 0 // u8 mac[6]
	cfgStatus  = 6 // le16 status
	configSize = 8
)

// Bits of the status field.
const (
	statusLinkUp   = 1 // VIRTIO_NET_S_LINK_UP: always set; the TAP's own state is the host's business
	statusAnnounce = 2 // VIRTIO_NET_S_ANNOUNCE: please announce yourself (after a migration)

	statusKnown = statusLinkUp | statusAnnounce
)

// Frame sizes. A frame is an Ethernet frame without the FCS (virtio and
// TAPs carry none); on the queues and at the backend it comes after a
// header of hdrSize bytes.
const (
	ethHeaderSize = 14 // ETH_HLEN: destination, source, EtherType
	// maxFrameSize is the largest frame: Linux's largest MTU (MAX_MTU,
	// 65535, what virtio_net allows without VIRTIO_NET_F_MTU) plus an
	// Ethernet header and a VLAN tag (VLAN_HLEN).
	maxFrameSize = 65535 + ethHeaderSize + 4
)

// Backend is where the frames go and come from: a TAP (*tap.TAP), or a
// fake in tests. Every frame crosses it with a virtio_net_hdr_v1 of
// hdrSize (12) bytes in front, as tap.Open sets a TAP up.
type Backend interface {
	// ReadFrame waits for the next frame for the guest and reads it,
	// header first, into p, which holds the largest frame. An error
	// ends reception for good. Close must make a waiting ReadFrame
	// return.
	ReadFrame(p []byte) (int, error)
	// WriteFrame sends one frame from the guest, header first. It may
	// be called from several goroutines at once.
	WriteFrame(p []byte) error
	// Close releases the backend.
	Close() error
}

// Detacher is a Backend that can stop receiving without closing, as a
// TAP queue can (tap.TAP.Detach). See Device.Detach.
type Detacher interface {
	Detach() error
	Attach() error
	// IsDetached reports whether another queue has the traffic.
	IsDetached() bool
}

// Config describes a virtio-net device.
type Config struct {
	Backend Backend
	// MAC is the guest's Ethernet address: 6 bytes, unicast (ParseMAC
	// checks one). If nil, New makes up a random, locally administered
	// one; a machine should rather pass the same address every time
	// (derived from its configuration), so that the guest keeps its
	// DHCP lease across reboots.
	MAC stdnet.HardwareAddr
	// Log receives guest errors (rate-limited) and backend errors. May
	// be nil.
	Log func(format string, args ...any)
}

// Device is a virtio-net device. It implements virtio.Device,
// virtio.ConfigChanger and io.Closer.
type Device struct {
	backend   Backend
	offloader Offloader // the backend, if it is one; else nil
	offered   uint64    // the features offered, fixed by New
	logf      func(format string, args ...any)

	mu            sync.Mutex
	mac           [6]byte        // changed only by RestoreState, before Activate
	status        uint16         // VIRTIO_NET_S_*
	negotiated    uint64         // the features the driver accepted, set by Activate
	configChanged func()         // from the transport: raises a config change interrupt
	stop          chan struct{}  // closed by Reset to end the queue goroutines
	workers       sync.WaitGroup // the queue goroutines
	readerStarted bool           // the reader runs from the first Activate to Close

	// Buffers for received frames go round between the reader (rx.go),
	// which fills them from the backend, and the receive queue's
	// goroutine, which copies them into the guest.
	rxFree, rxFull chan []byte
	// rxMu orders the reader's sends to rxFull with Reset's draining
	// of it, so that no frame meant for one driver reaches the next.
	rxMu sync.Mutex
	// receiving is set while a driver runs the receive queue; the
	// reader drops what arrives otherwise, as a NIC without a driver.
	receiving bool

	closing    chan struct{} // closed by Close
	closeOnce  sync.Once
	readerDone chan struct{} // closed when the reader has returned

	stats struct{ txFrames, txDropped, rxFrames, rxDropped atomic.Uint64 }
}

var (
	_ virtio.Device        = (*Device)(nil)
	_ virtio.ConfigChanger = (*Device)(nil)
)

// rxBuffers is how many received frames the device holds at most: one
// being copied into the guest, the others read ahead. Beyond them, frames
// wait in the kernel's queue of the TAP, which drops (and counts) what
// does not fit in it (txqueuelen).
const rxBuffers = 4

// New returns a virtio-net device on cfg.Backend; put it behind a
// transport with virtio.NewMMIO. A nil Backend or a MAC that is not a
// 6-byte unicast address is a programming error and panics.
func New(cfg Config) *Device {
	if cfg.Backend == nil {
		panic("net.New: no backend")
	}
	log := virtio.RateLimit(cfg.Log)
	d := &Device{
		backend:    cfg.Backend,
		logf:       func(format string, args ...any) { log("virtio-net: "+format, args...) },
		status:     statusLinkUp,
		rxFree:     make(chan []byte, rxBuffers),
		rxFull:     make(chan []byte, rxBuffers),
		closing:    make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	d.offloader, _ = cfg.Backend.(Offloader)
	d.offered = alwaysOffered
	if d.offloader != nil {
		d.offered |= offloadFeatures(d.offloader.SupportedOffloads())
	}
	if cfg.MAC == nil {
		d.mac = randomMAC()
	} else if err := checkMAC(cfg.MAC); err != nil {
		panic("net.New: " + err.Error())
	} else {
		copy(d.mac[:], cfg.MAC)
	}
	return d
}

// ParseMAC parses an Ethernet address ("52:54:00:12:34:56") and checks
// that a guest can have it.
func ParseMAC(s string) (stdnet.HardwareAddr, error) {
	mac, err := stdnet.ParseMAC(s)
	if err != nil {
		return nil, err
	}
	if err := checkMAC(mac); err != nil {
		return nil, err
	}
	return mac, nil
}

func checkMAC(mac stdnet.HardwareAddr) error {
	switch {
	case len(mac) != 6:
		return fmt.Errorf("MAC address %v is not 6 bytes long", mac)
	case mac[0]&1 != 0:
		// The I/G bit: a group address cannot be a NIC's own.
		return fmt.Errorf("MAC address %v is a multicast address", mac)
	case [6]byte(mac) == [6]byte{}:
		return errors.New("MAC address 00:00:00:00:00:00 is not valid")
	}
	return nil
}

// randomMAC makes an address the way Linux's eth_random_addr does: random,
// unicast, and locally administered (bit 1 of the first byte), so that it
// cannot clash with a vendor's.
func randomMAC() [6]byte {
	var mac [6]byte
	rand.Read(mac[:])
	mac[0] = mac[0]&^1 | 2
	return mac
}

// MAC is the guest's Ethernet address as the device reports it.
func (d *Device) MAC() stdnet.HardwareAddr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append(stdnet.HardwareAddr(nil), d.mac[:]...)
}

// Type is virtio.TypeNet.
func (d *Device) Type() virtio.DeviceType { return virtio.TypeNet }

// Features are the virtio-net feature bits offered: alwaysOffered, and
// the offloads the backend supports.
func (d *Device) Features() uint64 { return d.offered }

// QueueMaxSizes: receive, transmit, control.
func (d *Device) QueueMaxSizes() []uint16 {
	return []uint16{dataQueueSize, dataQueueSize, ctrlQueueSize}
}

// Config is struct virtio_net_config: the MAC and the link status. The
// status changes while the driver runs (Announce, the control queue), so
// each call builds a fresh copy under the lock.
func (d *Device) Config() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := make([]byte, configSize)
	copy(c[cfgMAC:], d.mac[:])
	binary.LittleEndian.PutUint16(c[cfgStatus:], d.status)
	return c
}

// WriteConfig ignores the write: a 1.x driver never writes the config
// space of virtio-net (only legacy drivers wrote mac, §5.1.4.2; a modern
// one would use VIRTIO_NET_CTRL_MAC_ADDR_SET, not offered here).
func (d *Device) WriteConfig(offset uint64, data []byte) {
	d.logf("write to read-only config space at %#x ignored", offset)
}

// SetConfigChanged receives the transport's function that raises a
// configuration change interrupt (virtio.ConfigChanger).
func (d *Device) SetConfigChanged(changed func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.configChanged = changed
}

// Activate sets the backend's offloads to what the driver accepted,
// starts one goroutine per queue, and the backend reader if it does not
// run yet. The transport calls it at DRIVER_OK, and after RestoreState on
// a migration's destination, so the destination's TAP gets the offloads
// of the features the guest negotiated on the source.
func (d *Device) Activate(features uint64, queues []*virtio.Queue) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := checkDependencies(features); err != nil {
		return err
	}
	select {
	case <-d.closing:
		return errors.New("the device is closed")
	default:
	}
	d.negotiated = features
	d.setBackendOffloads(tapOffloads(features))
	if !d.canAnnounce() {
		// A restored state may carry the bit; this driver could
		// never acknowledge it.
		d.status &^= statusAnnounce
	}
	d.startReader()
	stop := make(chan struct{})
	d.stop = stop
	queue := func(i int) *virtio.Queue {
		if i < len(queues) {
			return queues[i]
		}
		return nil
	}
	if q := queue(rxQueue); q != nil {
		d.rxMu.Lock()
		d.receiving = true
		d.rxMu.Unlock()
		d.workers.Go(func() { d.serveRX(q, features, stop) })
	}
	if q := queue(txQueue); q != nil {
		d.workers.Go(func() { d.serveTX(q, features, stop) })
	}
	// A control queue the driver set up without negotiating CTRL_VQ is
	// not one (§5.1.2): leave it alone.
	if q := queue(ctrlQueue); q != nil && features&featureCtrlVQ != 0 {
		d.workers.Go(func() { d.serveCtrl(q, stop) })
	}
	return nil
}

// canAnnounce reports whether the driver can be asked to announce itself:
// it must see the status field and acknowledge on the control queue.
// Called with d.mu held.
func (d *Device) canAnnounce() bool {
	const need = featureGuestAnnounce | featureCtrlVQ | featureStatus
	return d.negotiated&need == need
}

// Reset stops the queue goroutines and waits for them, drops the frames
// received for the old driver, clears the status to link up, and turns
// the backend's offloads off until the next driver says what it takes.
// The goroutines are stopped without d.mu held, since the control queue's
// takes it.
func (d *Device) Reset() {
	d.mu.Lock()
	stop := d.stop
	if stop == nil {
		d.mu.Unlock()
		return
	}
	d.stop = nil
	d.negotiated = 0
	d.status = statusLinkUp
	if !d.backendDetached() {
		// A detached TAP queue has handed the interface to another
		// queue, a migration destination's on this host, whose
		// device set the offloads for the same guest: the source's
		// Close must not take them away from it.
		d.setBackendOffloads(0)
	}
	d.mu.Unlock()
	close(stop)
	d.workers.Wait()
	d.rxMu.Lock()
	defer d.rxMu.Unlock()
	d.receiving = false
	for {
		select {
		case f := <-d.rxFull:
			d.stats.rxDropped.Add(1)
			d.rxFree <- f[:cap(f)]
		default:
			return
		}
	}
}

// Announce makes the guest's new whereabouts known after a live
// migration: switches learn which port its MAC is behind now, and its
// neighbours' ARP caches are refreshed. The machine calls it on the
// destination once the guest runs again.
//
// Like QEMU's qemu_announce_self, it does two things. The device sends a
// RARP broadcast from the guest's MAC itself, which teaches any switch or
// bridge on the way, whatever the guest's driver. And if the driver
// negotiated VIRTIO_NET_F_GUEST_ANNOUNCE, the device sets
// VIRTIO_NET_S_ANNOUNCE and raises a configuration change interrupt
// (virtio 1.2 §5.1.6.5.4): Linux's virtnet_config_changed_work then calls
// netdev_notify_peers, which sends gratuitous ARPs and IPv6 neighbour
// advertisements for the addresses the guest really has, and acknowledges
// with VIRTIO_NET_CTRL_ANNOUNCE_ACK. Until then the bit stays set, also in
// the saved state.
func (d *Device) Announce() error {
	d.mu.Lock()
	guest := d.stop != nil && d.canAnnounce()
	if guest {
		d.status |= statusAnnounce
	}
	mac, changed := d.mac, d.configChanged
	d.mu.Unlock()
	if guest && changed != nil {
		changed()
	}
	if err := d.backend.WriteFrame(rarpAnnouncement(mac)); err != nil {
		return fmt.Errorf("virtio-net: announcing %v: %w", stdnet.HardwareAddr(mac[:]), err)
	}
	return nil
}

// rarpAnnouncement is the frame QEMU's announce_self_create sends: a RARP
// "reverse request" (RFC 903) broadcast from mac, padded to the 60-byte
// Ethernet minimum. Nobody answers it; its point is its source address.
func rarpAnnouncement(mac [6]byte) []byte {
	b := make([]byte, hdrSize, hdrSize+60) // an all-zero virtio_net_hdr_v1 first
	b = append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	b = append(b, mac[:]...)
	b = binary.BigEndian.AppendUint16(b, 0x8035) // ETH_P_RARP
	b = binary.BigEndian.AppendUint16(b, 1)      // hardware: Ethernet
	b = binary.BigEndian.AppendUint16(b, 0x0800) // protocol: IPv4
	b = append(b, 6, 4)                          // address lengths
	b = binary.BigEndian.AppendUint16(b, 3)      // RARP reverse request
	b = append(b, mac[:]...)                     // sender hardware address
	b = append(b, 0, 0, 0, 0)                    // sender protocol address
	b = append(b, mac[:]...)                     // target hardware address
	b = append(b, 0, 0, 0, 0)                    // target protocol address
	return b[:cap(b)]                            // zero padding
}

// Detach stops the backend from receiving frames without closing it, if
// it can (a Detacher; otherwise Detach does nothing). On a migration
// between two processes on the same host that share a TAP, the source
// detaches once paused, so that the kernel sends the guest's traffic to
// the destination's queue instead; Attach undoes it if the migration
// fails. The destination opens its TAP detached (tap.Detached) and
// attaches once it has restored the device.
func (d *Device) Detach() error {
	if b, ok := d.backend.(Detacher); ok {
		return b.Detach()
	}
	return nil
}

// Attach undoes Detach.
func (d *Device) Attach() error {
	if b, ok := d.backend.(Detacher); ok {
		return b.Attach()
	}
	return nil
}

// backendDetached reports whether the backend is a detached Detacher.
func (d *Device) backendDetached() bool {
	b, ok := d.backend.(Detacher)
	return ok && b.IsDetached()
}

// Stats counts frames. Dropped received frames are those the device
// could not give the guest (no driver, a frame larger than the buffers,
// a reset); frames the guest did not take in time wait in the TAP's queue
// and are counted by the kernel when it overflows (ip -s link show).
type Stats struct {
	TXFrames  uint64 // frames from the guest sent to the backend
	TXDropped uint64 // frames from the guest refused (bad requests) or that the backend failed to send
	RXFrames  uint64 // frames delivered to the guest
	RXDropped uint64 // frames from the backend not delivered
}

// Stats returns the counters so far.
func (d *Device) Stats() Stats {
	return Stats{
		TXFrames:  d.stats.txFrames.Load(),
		TXDropped: d.stats.txDropped.Load(),
		RXFrames:  d.stats.rxFrames.Load(),
		RXDropped: d.stats.rxDropped.Load(),
	}
}

// Close stops the device and closes the backend, which ends the reader.
// The machine calls it when it unplugs the device, after the transport
// has stopped it.
func (d *Device) Close() error {
	d.Reset() // nothing to do if the transport has stopped the device
	var err error
	d.closeOnce.Do(func() {
		close(d.closing)
		err = d.backend.Close()
		d.mu.Lock()
		started := d.readerStarted
		d.mu.Unlock()
		if started {
			<-d.readerDone
		}
	})
	return err
}
