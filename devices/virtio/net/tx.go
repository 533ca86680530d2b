package net

import (
	"fmt"

	"govmm/devices/virtio"
)

// Transmitting: frames from the guest's transmit queue to the backend.
//
// Each chain of the transmit queue is one frame, header first, all
// device-readable (virtio 1.2 §5.1.6.2). How the driver splits it into
// descriptors is its business: Linux usually puts the header in the same
// buffer as the frame's first bytes (VIRTIO_F_ANY_LAYOUT, implied by
// VIRTIO_F_VERSION_1), and the rest of a large frame in page fragments.
// One goroutine serves the queue, so frames leave in the order the guest
// queued them. The frame's header goes to the backend checked but
// otherwise as the guest wrote it (forBackend): with the offloads
// negotiated, it may ask the host to finish a checksum or to segment a
// 64 KiB TCP segment, which a TAP does (offload.go).

// serveTX sends every frame the driver queues, until stop is closed.
func (d *Device) serveTX(q *virtio.Queue, features uint64, stop <-chan struct{}) {
	buf := make([]byte, hdrSize+maxFrameSize)
	for {
		select {
		case <-stop:
			return
		case <-q.Notified():
		}
		for c := q.Pop(); c != nil; c = q.Pop() {
			d.transmit(c, buf, features)
			q.Push(c) // nothing written: the used length is 0
		}
	}
}

// transmit copies a frame out of guest memory into buf and hands it to
// the backend. A bad frame is dropped and logged; the guest learns
// nothing, as from a real NIC whose cable drops a frame.
func (d *Device) transmit(c *virtio.Chain, buf []byte, features uint64) {
	if c.Err() != nil { // logged by Pop
		d.stats.txDropped.Add(1)
		return
	}
	n, err := txFrame(c, buf, features)
	if err != nil {
		d.logf("transmit chain %d: %v: dropped", c.Head(), err)
		d.stats.txDropped.Add(1)
		return
	}
	if err := d.backend.WriteFrame(buf[:n]); err != nil {
		d.logf("transmit: %v", err)
		d.stats.txDropped.Add(1)
		return
	}
	d.stats.txFrames.Add(1)
}

// txFrame checks a transmit chain and copies it, header and frame, into
// buf, which holds the largest frame. The copy is what gets checked and
// sent: the guest may change its buffers meanwhile.
func txFrame(c *virtio.Chain, buf []byte, features uint64) (int, error) {
	// UNTRUSTED: layout, length and header are the guest's.
	n := c.ReadableLen()
	switch {
	case c.WritableLen() != 0:
		// §5.1.6.2: the transmit chain is device-readable only; a
		// writable buffer means the driver mixed up its queues.
		return 0, fmt.Errorf("%d device-writable bytes in a transmit chain", c.WritableLen())
	case n < hdrSize+ethHeaderSize:
		return 0, fmt.Errorf("%d bytes is shorter than a %d-byte header and an Ethernet header", n, hdrSize)
	case n > int64(len(buf)):
		// With TSO too: Linux's GSO_LEGACY_MAX_SIZE keeps a segment
		// and its headers within 64 KiB.
		return 0, fmt.Errorf("frame of %d bytes is longer than the largest, %d", n-hdrSize, maxFrameSize)
	}
	c.ReadAt(buf[:n], 0)
	hdr, err := forBackend(parseHeader(buf), int(n)-hdrSize, features)
	if err != nil {
		return 0, fmt.Errorf("header: %w", err)
	}
	hdr.put(buf)
	return int(n), nil
}
