package virtio

import (
	"errors"
	"fmt"
	"io"

	"govmm/vmm"
)

// Chain is one request of the driver: a descriptor chain popped from a
// queue's avail ring (virtio 1.2 §2.7.5), already checked by walk.go. Its
// buffers are slices of guest RAM, in two parts (§2.7.4.2: all
// device-readable descriptors come before all device-writable ones):
//
//   - the readable part, what the driver sends: read it with ReadAt or
//     CopyOut;
//   - the writable part, where the device answers: write it with WriteAt
//     or CopyIn, which record the write in the dirty log.
//
// Each part is seen as one contiguous byte range, however the driver split
// it into descriptors: devices must not assume any particular framing
// (§2.6.4 "Message Framing").
//
// Every chain returned by Queue.Pop must be given back with Queue.Push, also
// a chain whose Err is set. A chain is used by one goroutine at a time.
//
// The guest can change its buffers while the device works on them. That
// cannot hurt the host (the slices stay inside guest RAM), but a device
// must read a field it validates once, into its own memory, and use that
// copy: ReadAt does exactly that.
type Chain struct {
	queue *Queue
	head  uint16 // descriptor index the chain started at: its ID in the used ring
	err   error  // why the chain is malformed, nil if it is not

	readable, writable       []segment
	readableLen, writableLen int64

	written int64 // length of the writable prefix filled so far
	pushed  bool
}

// segment is one descriptor's buffer: guest RAM at gpa, seen through data.
type segment struct {
	gpa  vmm.GPA
	data []byte
}

// Head is the index of the chain's first descriptor, which identifies the
// request to the driver.
func (c *Chain) Head() uint16 { return c.head }

// Err reports why the chain is malformed. Such a chain has no readable part
// and at most one writable buffer: the chain's last descriptor, if it was
// device-writable and itself sound, so that a device that answers in a
// trailing status byte (virtio-blk, virtio-scsi) can still report the error
// there. A device answers a malformed chain with an error or with nothing,
// and pushes it.
func (c *Chain) Err() error { return c.err }

// ReadableLen is the size of the readable part in bytes.
func (c *Chain) ReadableLen() int64 { return c.readableLen }

// WritableLen is the size of the writable part in bytes.
func (c *Chain) WritableLen() int64 { return c.writableLen }

// Written is how many bytes at the start of the writable part the device
// has filled: the len the used ring reports (virtio 1.2 §2.7.8.2: the
// device "MUST write at least len bytes to descriptor, beginning at the
// first device-writable buffer"). A write counts if it starts inside the
// prefix written so far, or right at its end: devices fill their answer
// from the front, and bytes beyond a gap are not claimed.
func (c *Chain) Written() int64 { return c.written }

var errRange = errors.New("virtio: access outside the chain's buffers")

// ReadAt copies the readable part, from offset off, into p. It implements
// io.ReaderAt: fewer than len(p) bytes come with io.EOF.
func (c *Chain) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > c.readableLen {
		return 0, errRange
	}
	n := min(int64(len(p)), c.readableLen-off)
	visit(c.readable, off, n, func(_ vmm.GPA, b []byte, pos int64) error {
		copy(p[pos:], b)
		return nil
	})
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// WriteAt copies p into the writable part at offset off and marks the
// guest pages dirty. It implements io.WriterAt: bytes that do not fit are
// not written and the error is io.ErrShortWrite.
func (c *Chain) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > c.writableLen {
		return 0, errRange
	}
	n := min(int64(len(p)), c.writableLen-off)
	visit(c.writable, off, n, func(gpa vmm.GPA, b []byte, pos int64) error {
		copy(b, p[pos:])
		c.wrote(gpa, off+pos, len(b))
		return nil
	})
	if n < int64(len(p)) {
		return int(n), io.ErrShortWrite
	}
	return int(n), nil
}

// CopyOut hands n bytes of the readable part, from offset off, to
// dst.WriteAt at dstOff, straight from guest RAM. virtio-blk writes a
// request's data to the disk this way, without a bounce buffer.
func (c *Chain) CopyOut(dst io.WriterAt, dstOff, off, n int64) (int64, error) {
	if off < 0 || n < 0 || off > c.readableLen || n > c.readableLen-off {
		return 0, errRange
	}
	var done int64
	err := visit(c.readable, off, n, func(_ vmm.GPA, b []byte, pos int64) error {
		k, err := dst.WriteAt(b, dstOff+pos)
		done += int64(k)
		if err == nil && k < len(b) {
			err = io.ErrShortWrite
		}
		return err
	})
	return done, err
}

// CopyIn fills n bytes of the writable part, from offset off, with
// src.ReadAt at srcOff, straight into guest RAM, and marks the pages dirty.
// virtio-blk reads from the disk this way.
func (c *Chain) CopyIn(src io.ReaderAt, srcOff, off, n int64) (int64, error) {
	if off < 0 || n < 0 || off > c.writableLen || n > c.writableLen-off {
		return 0, errRange
	}
	var done int64
	err := visit(c.writable, off, n, func(gpa vmm.GPA, b []byte, pos int64) error {
		k, err := src.ReadAt(b, srcOff+pos)
		k = max(0, min(k, len(b)))
		c.wrote(gpa, off+pos, k)
		done += int64(k)
		switch {
		case k == len(b):
			return nil // io.ReaderAt may report io.EOF with a full read at the end
		case err == nil:
			return io.ErrUnexpectedEOF
		}
		return err
	})
	return done, err
}

// wrote records that n bytes at gpa, offset off of the writable part, now
// hold device data: the dirty log learns about the pages (after the write,
// as vmm.GuestMemory.MarkDirty requires), and the written prefix grows if
// the bytes extend it.
func (c *Chain) wrote(gpa vmm.GPA, off int64, n int) {
	c.queue.mem.MarkDirty(gpa, uint64(n))
	if off <= c.written && off+int64(n) > c.written {
		c.written = off + int64(n)
	}
}

// visit calls fn for each piece of segs that overlaps [off, off+n), with
// the piece's guest address, its bytes and its position relative to off.
// The caller has checked that the range lies inside segs.
func visit(segs []segment, off, n int64, fn func(gpa vmm.GPA, b []byte, pos int64) error) error {
	var pos int64
	for _, s := range segs {
		if n == 0 {
			break
		}
		l := int64(len(s.data))
		if off >= l {
			off -= l
			continue
		}
		k := min(l-off, n)
		if err := fn(s.gpa+vmm.GPA(off), s.data[off:off+k], pos); err != nil {
			return err
		}
		pos += k
		n -= k
		off = 0
	}
	return nil
}

func (c *Chain) String() string {
	return fmt.Sprintf("chain %d (%d readable, %d writable bytes)", c.head, c.readableLen, c.writableLen)
}
