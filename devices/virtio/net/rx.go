package net

import (
	"encoding/binary"
	"fmt"
	"time"

	"govmm/devices/virtio"
)

// Receiving: frames from the backend into the guest's receive queue.
//
// The driver fills the receive queue with empty buffers ahead of time;
// the device takes one (or, with VIRTIO_NET_F_MRG_RXBUF, as many as the
// frame needs) when a frame arrives, copies the frame in behind a header,
// and returns the buffers in the used ring (virtio 1.2 §5.1.6.3, §5.1.6.4).
//
// Two goroutines share the work, so that a device can always stop
// promptly although a read from the backend blocks until some frame
// arrives, which may be never:
//
//	reader (readFrames)  one per device, from the first Activate to Close:
//	                     reads frames from the backend into host buffers
//	serveRX              one per activation: copies them into the guest
//
// Reset only has to stop serveRX, which waits on channels, never on the
// backend; the reader stays blocked in ReadFrame until Close closes the
// backend.
//
// Chains are popped only once a frame is in hand, and pushed right after
// the copy: a pause (which waits for every popped chain) never waits for
// the network. When the guest has no buffer free, serveRX holds on to the
// frame and waits for the driver's next notification, and frames behind
// it wait in the kernel's queue for the TAP.

// startReader allocates the receive buffers and starts the reader, once.
// Called with d.mu held.
func (d *Device) startReader() {
	if d.readerStarted {
		return
	}
	d.readerStarted = true
	for range rxBuffers {
		d.rxFree <- make([]byte, hdrSize+maxFrameSize)
	}
	go d.readFrames()
}

// readFrames is the reader: it fills free buffers from the backend and
// queues them for serveRX, until Close or a backend error.
func (d *Device) readFrames() {
	defer close(d.readerDone)
	for {
		var buf []byte
		select {
		case buf = <-d.rxFree:
		case <-d.closing:
			return
		}
		n, err := d.backend.ReadFrame(buf)
		if err != nil {
			select {
			case <-d.closing: // Close closed the backend under us
			default:
				d.logf("receiving stopped: %v", err)
			}
			return
		}
		d.rxMu.Lock()
		if d.receiving {
			d.rxFull <- buf[:n] // never blocks: rxFull has room for every buffer
		} else {
			d.stats.rxDropped.Add(1) // no driver: nobody to give it to
			d.rxFree <- buf
		}
		d.rxMu.Unlock()
	}
}

// serveRX delivers each frame the reader queues, until stop is closed.
func (d *Device) serveRX(q *virtio.Queue, features uint64, stop <-chan struct{}) {
	for {
		var pkt []byte
		select {
		case pkt = <-d.rxFull:
		case <-stop:
			return
		}
		d.receive(q, pkt, features, stop)
		d.rxFree <- pkt[:cap(pkt)]
	}
}

// receive delivers one frame (its backend header, then the frame), waiting
// for receive buffers if the guest has none. Notifications wake it when
// the driver adds buffers, and when the transport resumes after a pause
// (while paused, Pop hands out nothing).
func (d *Device) receive(q *virtio.Queue, pkt []byte, features uint64, stop <-chan struct{}) {
	if err := forGuest(pkt, features); err != nil {
		d.logf("received %v: dropped", err)
		d.stats.rxDropped.Add(1)
		return
	}
	mergeable := features&featureMrgRxbuf != 0
	for !d.deliver(q, pkt, mergeable, stop) {
		select {
		case <-q.Notified():
		case <-stop:
			d.stats.rxDropped.Add(1)
			return
		}
	}
}

// partialWait is how long deliver holds some of the buffers a frame needs
// while waiting for the driver to add the rest. A 64 KiB frame from the
// TAP's segmentation offload takes 16 or more of Linux's mergeable
// buffers (at most a page each), so a ring that still has a few is
// common; the driver refills it from its NAPI poll, within microseconds
// to a millisecond. Dropping at once would cost the guest a TCP
// retransmission of the whole 64 KiB. The wait is bounded because a pause
// waits for every chain popped (virtio.Queue.Pop).
const partialWait = 10 * time.Millisecond

// deliver copies pkt into the guest's receive buffers and pushes them. It
// returns false if the queue had no buffer at all (the frame is still to
// be delivered), true once the frame is delivered or dropped.
func (d *Device) deliver(q *virtio.Queue, pkt []byte, mergeable bool, stop <-chan struct{}) bool {
	need := int64(len(pkt))
	var chains []*virtio.Chain
	var room int64
	var timeout <-chan time.Time
	for room < need && (mergeable || len(chains) == 0) {
		c := q.Pop()
		if c == nil {
			if len(chains) == 0 {
				return false
			}
			if timeout == nil {
				timeout = time.After(partialWait)
			}
			if waitForBuffers(q, timeout, stop) {
				continue
			}
			// Some buffers, not enough, and no more coming: the
			// frame is dropped and the buffers go back empty (Linux
			// counts them as length errors and reuses them). With
			// Linux's buffers of at least 1.5 KiB, this takes a
			// frame larger than the guest's MTU.
			d.logf("a %d-byte frame needs more receive buffers than the driver made available: dropped", need-hdrSize)
			d.stats.rxDropped.Add(1)
			q.PushAll(chains...)
			return true
		}
		if err := d.checkRXChain(c, mergeable, len(chains) == 0); err != nil {
			d.logf("receive chain %d: %v", c.Head(), err)
			q.Push(c) // unused
			continue
		}
		chains = append(chains, c)
		room += c.WritableLen()
	}
	if room < need {
		// Without MRG_RXBUF a frame must fit one buffer (§5.1.6.3.1:
		// the driver SHOULD provide at least 1526 bytes, a 1500-byte
		// MTU's frame, and Linux gives 1518 plus the header; with
		// GUEST_TSO4/TSO6 it "SHOULD populate the receive queue(s)
		// with buffers of at least 65562 bytes", and Linux's "big
		// packets" mode chains MAX_SKB_FRAGS pages behind the header).
		d.logf("a %d-byte frame does not fit the driver's %d-byte receive buffer (no VIRTIO_NET_F_MRG_RXBUF): dropped", need-hdrSize, room)
		d.stats.rxDropped.Add(1)
		q.PushAll(chains...)
		return true
	}
	// §5.1.6.4.1: num_buffers is the number of buffers used, 1 without
	// MRG_RXBUF; every buffer but the last is filled completely.
	binary.LittleEndian.PutUint16(pkt[hdrNumBuffers:], uint16(len(chains))) // ≤ queue size
	var off int64
	for _, c := range chains {
		n := min(c.WritableLen(), need-off)
		c.WriteAt(pkt[off:off+n], 0) // marks the pages dirty
		off += n
	}
	d.stats.rxFrames.Add(1) // before the driver can see it
	// All at once: Linux's receive_mergeable drops the frame if it sees
	// the first buffer in the used ring before the others.
	q.PushAll(chains...)
	return true
}

// waitForBuffers waits for the driver's next notification; false if
// timeout or stop came first.
func waitForBuffers(q *virtio.Queue, timeout <-chan time.Time, stop <-chan struct{}) bool {
	select {
	case <-q.Notified():
		return true
	case <-timeout:
		return false
	case <-stop:
		return false
	}
}

// checkRXChain checks that a chain is a receive buffer.
func (d *Device) checkRXChain(c *virtio.Chain, mergeable, first bool) error {
	// UNTRUSTED: the chain's layout is the guest's; walk.go checked that
	// its buffers are guest RAM.
	switch {
	case c.Err() != nil:
		return c.Err()
	case c.ReadableLen() != 0:
		// §5.1.6.3.1: receive buffers are device-writable only.
		return fmt.Errorf("%d device-readable bytes in a receive buffer", c.ReadableLen())
	case mergeable && first && c.WritableLen() < hdrSize:
		// §5.1.6.3.1: with MRG_RXBUF "each buffer MUST be at least the
		// size of the struct virtio_net_hdr".
		return fmt.Errorf("receive buffer of %d bytes cannot hold the %d-byte header", c.WritableLen(), hdrSize)
	}
	return nil
}
