package net

import (
	"encoding/binary"
	"fmt"
)

// Every frame on the receive and transmit queues starts with a header,
// struct virtio_net_hdr_v1 (virtio 1.2 §5.1.6), little-endian:
//
//	u8   flags;        // VIRTIO_NET_HDR_F_*
//	u8   gso_type;     // VIRTIO_NET_HDR_GSO_*: segmentation still to do
//	le16 hdr_len;      // for GSO: length of the headers to repeat
//	le16 gso_size;     // for GSO: payload bytes per segment
//	le16 csum_start;   // for NEEDS_CSUM: where checksumming starts
//	le16 csum_offset;  // ... and where, after csum_start, the result goes
//	le16 num_buffers;  // receive: how many buffers the frame spans
//
// The header is how the two sides hand each other unfinished work: a
// checksum to compute (NEEDS_CSUM), a 64 KiB TCP segment to cut into
// MTU-sized frames (gso_type). With none of the offload features
// negotiated, there is no such work: the driver sends all zeros, and the
// device answers all zeros except num_buffers. A TAP with IFF_VNET_HDR
// uses the same header (include/uapi/linux/virtio_net.h), so a TAP frame
// and a queue frame have the same layout.
const (
	hdrSize = 12 // sizeof(struct virtio_net_hdr_v1), with num_buffers

	hdrFlags      = 0
	hdrGSOType    = 1
	hdrCsumStart  = 6
	hdrCsumOffset = 8
	hdrNumBuffers = 10

	hdrFlagNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM: the checksum is partial
	hdrFlagDataValid = 2 // VIRTIO_NET_HDR_F_DATA_VALID: the checksum was verified
	gsoNone          = 0 // VIRTIO_NET_HDR_GSO_NONE
)

// fromBackend turns the header of a frame read from the backend (hdr, then
// the Ethernet frame, in pkt) into one for a driver that negotiated no
// offloads. The header is the host kernel's, so nothing here is the
// guest's doing.
//
// §5.1.6.4.1: without VIRTIO_NET_F_GUEST_CSUM the device "MUST set flags
// to zero and SHOULD supply a fully checksummed packet". A TAP opened
// without offloads never leaves a checksum partial, but it does report a
// checksum it has verified (DATA_VALID, tun_put_user → virtio_net_hdr_from_skb),
// which this driver was not told it could be given: the flag is cleared
// and the guest checks for itself. A partial checksum, from a backend
// with offloads, is finished here; a frame left for segmentation cannot
// be delivered without GSO and is refused.
func fromBackend(pkt []byte) error {
	if len(pkt) < hdrSize+ethHeaderSize {
		return fmt.Errorf("frame of %d bytes with its header is shorter than a %d-byte header and an Ethernet header",
			len(pkt), hdrSize)
	}
	if gso := pkt[hdrGSOType]; gso != gsoNone {
		return fmt.Errorf("frame of %d bytes left for segmentation (gso_type %d), which the guest cannot do here", len(pkt)-hdrSize, gso)
	}
	if pkt[hdrFlags]&hdrFlagNeedsCsum != 0 {
		start := int(binary.LittleEndian.Uint16(pkt[hdrCsumStart:]))
		offset := int(binary.LittleEndian.Uint16(pkt[hdrCsumOffset:]))
		if err := completeChecksum(pkt[hdrSize:], start, offset); err != nil {
			return err
		}
	}
	clear(pkt[:hdrSize])
	return nil
}

// completeChecksum does what the host left to the NIC with NEEDS_CSUM, as
// Linux's skb_checksum_help does: the 16-bit field at start+offset holds
// the sum of the pseudo-header (for TCP and UDP); the Internet checksum
// (RFC 1071) of everything from start to the end of the frame, that field
// included, goes into it.
func completeChecksum(frame []byte, start, offset int) error {
	if start >= len(frame) || offset > len(frame)-start-2 {
		return fmt.Errorf("partial checksum at %d+%d lies outside the %d-byte frame", start, offset, len(frame))
	}
	var sum uint32
	data := frame[start:]
	for len(data) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(data))
		data = data[2:]
	}
	if len(data) == 1 {
		sum += uint32(data[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	csum := ^uint16(sum)
	if csum == 0 {
		// CSUM_MANGLED_0: for UDP a zero checksum means "none".
		csum = 0xffff
	}
	binary.BigEndian.PutUint16(frame[start+offset:], csum)
	return nil
}
