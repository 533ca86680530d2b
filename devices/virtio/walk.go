package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"govmm/vmm"
)

// This file is the one place that reads what the driver put in a queue: the
// avail ring's next entry and the descriptor chain it names. Everything
// here comes from the guest and is checked before use; nothing else in
// govmm follows a guest descriptor. A bad ring (an index it cannot have)
// breaks the device: Pop reports it and the transport sets
// DEVICE_NEEDS_RESET. A bad chain is handed to the device as a Chain with
// Err set, to be answered with an error.

// descriptor is one entry of a descriptor table, struct virtq_desc
// (virtio 1.2 §2.7.5), copied out of guest memory once so that the guest
// cannot change it between the check and the use.
type descriptor struct {
	addr  uint64 // le64 addr: guest-physical address of the buffer
	len   uint32 // le32 len
	flags uint16 // le16 flags
	next  uint16 // le16 next: the following descriptor if flags has NEXT
}

const descriptorSize = 16

// Descriptor flags (virtio 1.2 §2.7.5).
const (
	descFlagNext     = 1 // VIRTQ_DESC_F_NEXT: the chain continues at next
	descFlagWrite    = 2 // VIRTQ_DESC_F_WRITE: device-writable (else device-readable)
	descFlagIndirect = 4 // VIRTQ_DESC_F_INDIRECT: the buffer is a table of descriptors
)

// maxChainBytes bounds a chain's total buffer length. The used ring
// reports the written length in a le32, so a longer chain could not be
// answered truthfully; Linux's requests are a few MiB at most.
const maxChainBytes = math.MaxUint32

func readDescriptor(table []byte, i uint16) descriptor {
	d := table[int(i)*descriptorSize:][:descriptorSize]
	return descriptor{
		addr:  binary.LittleEndian.Uint64(d[0:]),
		len:   binary.LittleEndian.Uint32(d[8:]),
		flags: binary.LittleEndian.Uint16(d[12:]),
		next:  binary.LittleEndian.Uint16(d[14:]),
	}
}

// nextHead takes the next entry of the avail ring (virtio 1.2 §2.7.6): the
// head of a chain the driver made available. ok is false when the ring is
// empty; an error means the ring itself is corrupt. Called with q.mu held.
func (q *Queue) nextHead() (head uint16, ok bool, err error) {
	avail := q.availIdx.load()
	if avail == q.lastAvail {
		if !q.eventIdx {
			return 0, false, nil
		}
		// Ask the driver to notify us for the next chain it adds
		// (avail_event, §2.7.10), then look again: a chain added
		// before the driver could see the new avail_event would
		// otherwise wait for a notification that never comes. While
		// the ring is not empty, avail_event stays behind and the
		// driver does not notify at all, which is what makes
		// EVENT_IDX cheap.
		q.availEvent.store(q.lastAvail)
		q.mem.MarkDirty(q.availEventGPA, 2)
		if avail = q.availIdx.load(); avail == q.lastAvail {
			return 0, false, nil
		}
	}
	// UNTRUSTED: avail->idx is free-running and only ever moves ahead by
	// the number of chains added; the driver cannot have more than the
	// queue size outstanding (§2.7.13.3). A bigger jump is a corrupt ring.
	if pending := avail - q.lastAvail; pending > q.size {
		return 0, false, fmt.Errorf("avail idx %d is %d entries ahead of %d, more than the queue size %d",
			avail, pending, q.lastAvail, q.size)
	}
	slot := q.lastAvail & (q.size - 1) // size is a power of two
	head = binary.LittleEndian.Uint16(q.availRing[4+2*int(slot):])
	// UNTRUSTED: a head that names no descriptor cannot even be returned
	// to the driver: the used ring would carry an ID it never gave us.
	if head >= q.size {
		return 0, false, fmt.Errorf("avail ring entry %d names descriptor %d, queue size is %d", slot, head, q.size)
	}
	q.lastAvail++
	return head, true, nil
}

// readChain follows the chain starting at head and checks it. The result
// always carries head, so that the device can return it.
func (q *Queue) readChain(head uint16) *Chain {
	c := &Chain{queue: q, head: head}
	descs, err := q.walk(head)
	if err != nil {
		c.err = fmt.Errorf("chain %d: %w", head, err)
		return c
	}
	if err := q.mapBuffers(c, descs); err != nil {
		c.err = fmt.Errorf("chain %d: %w", head, err)
		// Keep only the last buffer, if it is writable and sound:
		// where a status byte would be (Chain.Err).
		c.readable, c.writable, c.readableLen, c.writableLen = nil, nil, 0, 0
		if last := descs[len(descs)-1]; last.flags&descFlagWrite != 0 && last.len > 0 {
			if b, err := q.mem.Slice(vmm.GPA(last.addr), uint64(last.len)); err == nil {
				c.writable = []segment{{vmm.GPA(last.addr), b}}
				c.writableLen = int64(last.len)
			}
		}
	}
	return c
}

// walk follows the next links from head and returns the chain's buffer
// descriptors in order, with an indirect table (§2.7.5.3) expanded in
// place. It checks the chain's shape; an error means its end cannot be
// known.
func (q *Queue) walk(head uint16) ([]descriptor, error) {
	table, entries := q.descTable, q.size
	inIndirect := false
	var out []descriptor
	// UNTRUSTED: every index, flag and length below comes from the guest.
	for i := head; ; {
		if i >= entries {
			return nil, fmt.Errorf("descriptor index %d out of range (table has %d)", i, entries)
		}
		// A chain "MUST NOT" be longer than the queue size
		// (§2.7.5.3.1). Counting also ends any loop in the next links.
		if len(out) == int(q.size) {
			return nil, fmt.Errorf("chain longer than the queue size %d (a loop?)", q.size)
		}
		d := readDescriptor(table, i)
		if d.flags&descFlagIndirect != 0 {
			// §2.7.5.3.1: the driver "MUST NOT set the
			// VIRTQ_DESC_F_INDIRECT flag unless the
			// VIRTIO_F_INDIRECT_DESC feature was negotiated",
			// "MUST NOT set the VIRTQ_DESC_F_INDIRECT flag within
			// an indirect descriptor", and "MUST NOT set both
			// VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT". The
			// WRITE flag of this descriptor is ignored (§2.7.5.3.2).
			switch {
			case !q.indirect:
				return nil, errors.New("indirect descriptor, but VIRTIO_F_INDIRECT_DESC was not negotiated")
			case inIndirect:
				return nil, errors.New("indirect descriptor inside an indirect table")
			case d.flags&descFlagNext != 0:
				return nil, errors.New("descriptor has both INDIRECT and NEXT")
			case d.len == 0 || d.len%descriptorSize != 0:
				return nil, fmt.Errorf("indirect table length %d is not a positive multiple of %d", d.len, descriptorSize)
			case d.len/descriptorSize > uint32(q.size):
				return nil, fmt.Errorf("indirect table of %d entries is longer than the queue size %d", d.len/descriptorSize, q.size)
			}
			t, err := q.mem.Slice(vmm.GPA(d.addr), uint64(d.len))
			if err != nil {
				return nil, fmt.Errorf("indirect table: %w", err)
			}
			table, entries, inIndirect, i = t, uint16(d.len/descriptorSize), true, 0
			continue
		}
		out = append(out, d)
		if d.flags&descFlagNext == 0 {
			return out, nil
		}
		i = d.next
	}
}

// mapBuffers checks each buffer of a well-shaped chain and turns it into a
// slice of guest RAM in c.
func (q *Queue) mapBuffers(c *Chain, descs []descriptor) error {
	var total uint64
	// UNTRUSTED: addresses and lengths come from the guest.
	for _, d := range descs {
		writable := d.flags&descFlagWrite != 0
		switch {
		case !writable && len(c.writable) > 0:
			// §2.7.4.2: the driver "MUST place any device-writable
			// descriptor elements after any device-readable
			// descriptor elements".
			return errors.New("device-readable buffer after a device-writable one")
		case d.len == 0:
			// Linux never sends one; QEMU refuses them too.
			return errors.New("zero-length buffer")
		}
		total += uint64(d.len)
		if total > maxChainBytes {
			return fmt.Errorf("chain holds more than %d bytes", uint64(maxChainBytes))
		}
		// The one bounds check: the whole buffer must be RAM, inside a
		// single region (vmm.GuestMemory.Slice).
		b, err := q.mem.Slice(vmm.GPA(d.addr), uint64(d.len))
		if err != nil {
			return err
		}
		s := segment{vmm.GPA(d.addr), b}
		if writable {
			c.writable = append(c.writable, s)
			c.writableLen += int64(d.len)
		} else {
			c.readable = append(c.readable, s)
			c.readableLen += int64(d.len)
		}
	}
	return nil
}
