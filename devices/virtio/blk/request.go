package blk

import (
	"encoding/binary"
	"errors"
	"fmt"

	"govmm/devices/virtio"
)

// A virtio-blk request (virtio 1.2 §5.2.6) is one descriptor chain:
//
//	struct virtio_blk_req {
//		le32 type;          // readable: the 16-byte header
//		le32 reserved;
//		le64 sector;        // in 512-byte units
//		u8   data[];        // readable for OUT, DISCARD, WRITE_ZEROES; writable for IN, GET_ID
//		u8   status;        // writable: the last byte of the chain
//	};
//
// How the driver splits this into descriptors is its business (§2.6.4);
// the device sees the readable and the writable part as byte ranges.

// Request types (virtio 1.2 §5.2.6; Linux include/uapi/linux/virtio_blk.h).
const (
	typeIn          = 0  // VIRTIO_BLK_T_IN: read sectors
	typeOut         = 1  // VIRTIO_BLK_T_OUT: write sectors
	typeFlush       = 4  // VIRTIO_BLK_T_FLUSH: make completed writes durable
	typeGetID       = 8  // VIRTIO_BLK_T_GET_ID: the serial, up to 20 bytes
	typeDiscard     = 11 // VIRTIO_BLK_T_DISCARD
	typeWriteZeroes = 13 // VIRTIO_BLK_T_WRITE_ZEROES
)

// Status values, the request's last byte.
const (
	statusOK     = 0 // VIRTIO_BLK_S_OK
	statusIOErr  = 1 // VIRTIO_BLK_S_IOERR
	statusUnsupp = 2 // VIRTIO_BLK_S_UNSUPP
)

const headerSize = 16

// struct virtio_blk_discard_write_zeroes, one segment of a DISCARD or
// WRITE_ZEROES request: le64 sector, le32 num_sectors, le32 flags.
const (
	segmentSize = 16
	flagUnmap   = 1 // VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
)

// handle serves one request and writes its status byte. The used length
// the transport reports is what the chain recorded: the data read into the
// driver's buffers, plus the status byte when it follows them.
func (d *Device) handle(c *virtio.Chain) {
	if c.Err() != nil { // already logged by the queue
		d.finish(c, statusIOErr) // if the last buffer is a sound status byte
		return
	}
	status, err := d.serve(c)
	if err != nil {
		d.logf("request %d: %v", c.Head(), err)
	}
	d.finish(c, status)
}

// finish writes status into the chain's last writable byte, if it has one.
func (d *Device) finish(c *virtio.Chain, status byte) {
	if n := c.WritableLen(); n > 0 {
		c.WriteAt([]byte{status}, n-1)
	}
}

var errNoStatus = errors.New("no writable status byte: the request cannot be answered")

// serve parses the request and carries it out. The error explains a
// status other than OK, for the log.
func (d *Device) serve(c *virtio.Chain) (byte, error) {
	// UNTRUSTED: the layout and contents of the request come from the
	// guest. walk.go has checked that the buffers are guest RAM; what is
	// checked here is that they make a virtio-blk request.
	if c.WritableLen() < 1 {
		return statusIOErr, errNoStatus
	}
	var hdr [headerSize]byte
	if n, _ := c.ReadAt(hdr[:], 0); n < headerSize {
		return statusIOErr, fmt.Errorf("header of %d bytes, want %d", n, headerSize)
	}
	typ := binary.LittleEndian.Uint32(hdr[0:])
	sector := binary.LittleEndian.Uint64(hdr[8:])
	dataOut := c.ReadableLen() - headerSize // what the driver sent after the header
	dataIn := c.WritableLen() - 1           // room for the answer before the status byte

	// Data must travel the way the type says; a buffer in the other
	// direction means the driver and device disagree on the request.
	wantOut, wantIn := false, false
	switch typ {
	case typeIn, typeGetID:
		wantIn = true
	case typeOut, typeDiscard, typeWriteZeroes:
		wantOut = true
	case typeFlush:
	default:
		return statusUnsupp, fmt.Errorf("unsupported request type %d", typ)
	}
	if (dataOut > 0 && !wantOut) || (dataIn > 0 && !wantIn) {
		return statusIOErr, fmt.Errorf("type %d request with %d bytes out, %d bytes in: data in the wrong direction", typ, dataOut, dataIn)
	}

	switch typ {
	case typeIn:
		return d.read(c, sector, dataIn)
	case typeOut:
		return d.write(c, sector, dataOut)
	case typeFlush:
		return d.flush()
	case typeGetID:
		// §5.2.6.1: up to 20 bytes, NUL-padded; no NUL if 20 long.
		c.WriteAt(d.serial[:min(dataIn, idBytes)], 0)
		return statusOK, nil
	default: // typeDiscard, typeWriteZeroes
		return d.discardOrZero(c, typ, dataOut)
	}
}

// checkRange accepts n bytes at sector if they are whole sectors on the disk.
func (d *Device) checkRange(sector uint64, n int64) error {
	if n%sectorSize != 0 {
		return fmt.Errorf("%d bytes is not a whole number of sectors", n)
	}
	if sectors := uint64(n) / sectorSize; sector > d.capacity || sectors > d.capacity-sector {
		return fmt.Errorf("sectors %d+%d are beyond the disk's %d", sector, sectors, d.capacity)
	}
	return nil
}

// read reads n bytes at sector straight into the driver's buffers.
func (d *Device) read(c *virtio.Chain, sector uint64, n int64) (byte, error) {
	if err := d.checkRange(sector, n); err != nil {
		return statusIOErr, fmt.Errorf("read: %w", err)
	}
	if _, err := c.CopyIn(d.disk, int64(sector*sectorSize), 0, n); err != nil {
		return statusIOErr, fmt.Errorf("read of %d bytes at sector %d: %w", n, sector, err)
	}
	return statusOK, nil
}

// write writes the request's n data bytes at sector, straight from the
// driver's buffers.
func (d *Device) write(c *virtio.Chain, sector uint64, n int64) (byte, error) {
	if d.readOnly {
		// §5.2.6.2: IOERR, and no data written.
		return statusIOErr, errors.New("write to a read-only disk")
	}
	if err := d.checkRange(sector, n); err != nil {
		return statusIOErr, fmt.Errorf("write: %w", err)
	}
	if _, err := c.CopyOut(d.disk, int64(sector*sectorSize), headerSize, n); err != nil {
		return statusIOErr, fmt.Errorf("write of %d bytes at sector %d: %w", n, sector, err)
	}
	return d.writeThrough()
}

// writeThrough makes a completed write durable if the driver did not
// negotiate VIRTIO_BLK_F_FLUSH: §5.2.6.2 says a write is then stable when
// it completes ("neither VIRTIO_BLK_F_CONFIG_WCE nor VIRTIO_BLK_F_FLUSH
// feature were negotiated, but VIRTIO_BLK_F_FLUSH was offered").
func (d *Device) writeThrough() (byte, error) {
	if d.negotiated&featureFlush != 0 {
		return statusOK, nil
	}
	return d.flush()
}

// flush makes every completed write durable (§5.2.6.2 case 3). Writes
// complete only after the backend returned, so the backend's Flush covers
// every write the driver has seen complete, however the workers interleave.
func (d *Device) flush() (byte, error) {
	if d.readOnly {
		return statusOK, nil // nothing was ever written
	}
	if err := d.disk.Flush(); err != nil {
		return statusIOErr, fmt.Errorf("flush: %w", err)
	}
	return statusOK, nil
}

// discardOrZero serves DISCARD and WRITE_ZEROES: a list of segments, all
// checked before any is carried out.
func (d *Device) discardOrZero(c *virtio.Chain, typ uint32, n int64) (byte, error) {
	name, feature, maxSegs := "discard", uint64(featureDiscard), int64(maxDiscardSegments)
	if typ == typeWriteZeroes {
		name, feature, maxSegs = "write zeroes", featureWriteZeroes, maxWriteZeroesSegs
	}
	switch {
	case d.negotiated&feature == 0:
		return statusUnsupp, fmt.Errorf("%s without the feature", name)
	case d.readOnly: // cannot happen: the features are not offered then
		return statusIOErr, fmt.Errorf("%s on a read-only disk", name)
	case n == 0 || n%segmentSize != 0 || n/segmentSize > maxSegs:
		return statusIOErr, fmt.Errorf("%s: %d bytes of segments, want 1 to %d segments of %d", name, n, maxSegs, segmentSize)
	}
	buf := make([]byte, n) // at most maxDiscardSegments × 16 bytes
	c.ReadAt(buf, headerSize)
	type segment struct {
		sector, sectors uint64
		unmap           bool
	}
	var segs []segment
	for off := 0; off < len(buf); off += segmentSize {
		b := buf[off : off+segmentSize]
		seg := segment{
			sector:  binary.LittleEndian.Uint64(b[0:]),
			sectors: uint64(binary.LittleEndian.Uint32(b[8:])),
		}
		flags := binary.LittleEndian.Uint32(b[12:])
		seg.unmap = flags&flagUnmap != 0
		switch {
		case flags&^flagUnmap != 0:
			// §5.2.6.2: UNSUPP for unknown flags, and for a
			// discard with the unmap flag.
			return statusUnsupp, fmt.Errorf("%s: unknown flags %#x", name, flags)
		case typ == typeDiscard && seg.unmap:
			return statusUnsupp, errors.New("discard with the unmap flag")
		case seg.sectors > maxZeroSectors:
			return statusIOErr, fmt.Errorf("%s of %d sectors, more than %d", name, seg.sectors, maxZeroSectors)
		}
		if err := d.checkRange(seg.sector, int64(seg.sectors*sectorSize)); err != nil {
			return statusIOErr, fmt.Errorf("%s: %w", name, err)
		}
		segs = append(segs, seg)
	}
	for _, s := range segs {
		off, length := int64(s.sector*sectorSize), int64(s.sectors*sectorSize)
		var err error
		if typ == typeDiscard {
			err = d.discarder.Discard(off, length)
		} else {
			err = d.zeroer.WriteZeroes(off, length, s.unmap)
		}
		if err != nil {
			return statusIOErr, fmt.Errorf("%s of sectors %d+%d: %w", name, s.sector, s.sectors, err)
		}
	}
	if typ == typeWriteZeroes {
		return d.writeThrough()
	}
	return statusOK, nil
}
